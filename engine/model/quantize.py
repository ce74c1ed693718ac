"""Weight quantization of the DualAR transformer layers (the output heads and codec stay float).

int8 (float16/bfloat16 weights, and bf16 on CPU) is :class:`Int8Linear` on both devices, with
torchao's symmetric per-channel scheme. On CPU it calls aten's ``_weight_int8pack_mm``, whose CPU
kernel (and inductor's CPU lowering) reads the int8 codes directly. On CUDA it is gpt-fast's
``F.linear(x, w.to(dtype)) * scales``: torch.compile fuses the conversion into the matmul (at
one row, a GEMV that reads int8), while aten's CUDA ``_weight_int8pack_mm`` is one thread per
output looping over K in fp32 (torch 2.11's ``int8mm.cu``), slower than a bf16 GEMV. Eager, that
form copies each weight to the float dtype per call, so ``resolve_profile`` runs CUDA int8 only
compiled. GPU int4 is torchao's tinygemm layout (aten's ``_weight_int4pack_mm``, fast eager too),
nf4 is bitsandbytes (a memory option, experimental).
On CPUs with AVX-512 VNNI bf16 int8 runs on our own kernel instead (``engine.model.int8_kernel``,
the ``int8_kernel`` knob): aten's is compute bound there.
CPU fp32 int8 is dynamic (``quantize_dynamic``, which only runs on CPU); CPU int4 is
:class:`Int4Linear` (tinygemm's scheme on aten's CPU kernel, since torchao 0.18 has no CPU int4
layout); nf4 is bitsandbytes' CPU path. The same quantization arithmetic on both devices is what
lets CPU fidelity runs stand in for the GPU's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import DualARTransformer
from torch import nn

from engine.model import int8_kernel

log = logging.getLogger(__name__)


def _layer_stacks(model: DualARTransformer) -> list[nn.ModuleList]:
    return [model.layers, model.fast_layers]


def _swap_linears(
    model: DualARTransformer, replace: Callable[[nn.Linear], nn.Module | None]
) -> int:
    """Put ``replace(layer)`` in place of every plain linear layer of the transformer stacks.

    Returns how many layers ``replace`` declined (returned None for) and so stay float.
    """
    kept = 0
    for stack in _layer_stacks(model):
        for parent in stack.modules():
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                swapped = replace(child)
                if swapped is None:
                    kept += 1
                else:
                    setattr(parent, name, swapped)
    return kept


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer: symmetric, one scale per output channel.

    torchao's ``Int8WeightOnlyConfig`` scheme (scale = max|w| / 127.5, codes in [-128, 127]);
    on CPU aten's kernel reads the int8 codes directly, or with ``kernel`` ``vnni`` or ``amx`` our
    own kernel does (``engine.model.int8_kernel``; ``amx`` runs prefills on AMX tiles); on CUDA
    inductor fuses the conversion into the matmul (see the module docstring).
    """

    def __init__(self, linear: nn.Linear, kernel: str = "stock") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.5).clamp(min=1e-8)
        codes = (weight / scales[:, None]).round().clamp(-128, 127).to(torch.int8)
        self.register_buffer("weight", codes)
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        fits = int8_kernel.fits(self.in_features, self.out_features)
        self.kernel = kernel if fits else "stock"
        if self.kernel != "stock":
            self.register_buffer("rowsum", codes.sum(1, dtype=torch.int32), persistent=False)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            out = F.linear(x, self.weight.to(x.dtype)) * self.scales
        else:
            flat = x.reshape(-1, self.in_features)
            if self.kernel != "stock":
                amx = self.kernel == "amx"
                out = int8_kernel.int8_gemv(flat, self.weight, self.rowsum, self.scales, amx)
            else:
                out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
            out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class Int4Linear(nn.Module):
    """Weight-only int4 linear layer on CPU: asymmetric, group-wise, bf16-compatible.

    The quantization is torchao's tinygemm scheme (4-bit codes, per-group scale and a float zero
    point at the mid code), so its error matches the GPU int4 path; the matmul is aten's CPU
    int4 kernel, which unpacks the codes group by group instead of materializing the weight.
    """

    inner_k_tiles = 2

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        codes, scales_and_zeros = quantize_int4_groups(linear.weight.detach(), group_size)
        self.register_buffer(
            "weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, self.inner_k_tiles)
        )
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(linear.weight.dtype))
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.weight, self.group_size, self.scales_and_zeros
        ).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def quantize_int4_groups(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes [out, in] (int32, 0..15) and packed scales/zeros [groups, out, 2] (float32).

    Dequantization is ``(code - 8) * scale + zero``: the tinygemm convention.
    """
    groups = weight.float().reshape(-1, group_size)
    low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-6)
    zeros = low + scales * 8
    codes = groups.sub(low).div(scales).round().clamp(0, 15).to(torch.int32)
    out = weight.shape[0]
    scales_and_zeros = torch.cat([scales.reshape(out, -1, 1), zeros.reshape(out, -1, 1)], dim=2)
    return codes.reshape(weight.shape), scales_and_zeros.transpose(0, 1).contiguous()


def quantize_cpu_int4(model: DualARTransformer, group_size: int) -> None:
    """Swap every transformer linear layer whose width the group size divides for Int4Linear."""
    kept = _swap_linears(
        model,
        lambda layer: None if layer.in_features % group_size else Int4Linear(layer, group_size),
    )
    if kept:
        log.warning(
            "int4: %d linear layers stay float (width not a multiple of %d)", kept, group_size
        )


def quantize_cpu_int8(model: DualARTransformer) -> None:
    """Dynamic int8 (fp32 engines): activations quantized per call, CPU only."""
    for stack in _layer_stacks(model):
        torch.ao.quantization.quantize_dynamic(stack, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_torchao_int4(model: DualARTransformer, group_size: int) -> None:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

    # The tinygemm layout: its kernels ship with torch (the default PLAIN layout needs the
    # separate mslk kernels).
    config = Int4WeightOnlyConfig(
        group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D
    )
    for stack in _layer_stacks(model):
        quantize_(stack, config)


def quantize_nf4(model: DualARTransformer, dtype: torch.dtype) -> None:
    import bitsandbytes as bnb

    def to_nf4(layer: nn.Linear) -> nn.Module:
        q = bnb.nn.Linear4bit(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            compute_dtype=dtype,
            quant_type="nf4",
            device="cpu",
        )
        q.weight = bnb.nn.Params4bit(layer.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        if layer.bias is not None:
            q.bias = nn.Parameter(layer.bias.data, requires_grad=False)
        return q.to(layer.weight.device)  # the move to the device is what quantizes

    _swap_linears(model, to_nf4)


def apply_quantization(
    model: DualARTransformer,
    kind: str,
    device: torch.device,
    group_size: int,
    kernel: str = "stock",
) -> None:
    """Quantize in place with the scheme a *resolved* profile names for ``device``; ``kernel``
    is its ``int8_kernel`` (``vnni``, ``amx``: CPU int8 layers on ``engine.model.int8_kernel``)."""
    if kind == "none":
        return
    dtype = model.norm.weight.dtype
    if kind == "nf4":
        quantize_nf4(model, dtype)
    elif kind == "int4":
        (quantize_cpu_int4 if device.type == "cpu" else quantize_torchao_int4)(model, group_size)
    elif device.type == "cpu" and dtype == torch.float32:
        quantize_cpu_int8(model)
    else:
        _swap_linears(model, lambda layer: Int8Linear(layer, kernel))
