"""Weight quantization of the DualAR transformer layers (the output heads and codec stay float).

GPU: int8 and int4 weight-only via torchao, nf4 via bitsandbytes (a memory option, experimental).
CPU: dynamic int8 via ``torch.ao.quantization.quantize_dynamic``, which only runs on CPU.
"""

from __future__ import annotations

import logging

import torch
from fish_speech.models.text2semantic.llama import DualARTransformer
from torch import nn

log = logging.getLogger(__name__)


def _layer_stacks(model: DualARTransformer) -> list[nn.ModuleList]:
    return [model.layers, model.fast_layers]


def quantize_cpu_int8(model: DualARTransformer) -> None:
    for stack in _layer_stacks(model):
        torch.ao.quantization.quantize_dynamic(stack, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_torchao(model: DualARTransformer, kind: str, group_size: int) -> None:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

    # int4 uses the tinygemm layout: its kernels ship with torch (the default PLAIN layout needs
    # the separate mslk kernels).
    config = (
        Int8WeightOnlyConfig()
        if kind == "int8"
        else Int4WeightOnlyConfig(
            group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D
        )
    )
    for stack in _layer_stacks(model):
        quantize_(stack, config)


def quantize_nf4(model: DualARTransformer, dtype: torch.dtype) -> None:
    import bitsandbytes as bnb

    for stack in _layer_stacks(model):
        for parent in stack.modules():
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=dtype,
                    quant_type="nf4",
                    device="cpu",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data.cpu(), requires_grad=False, quant_type="nf4"
                )
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q.to(child.weight.device))


def apply_quantization(
    model: DualARTransformer, kind: str, device: torch.device, group_size: int
) -> str:
    """Quantize in place; returns the scheme that was applied ("none" when nothing was)."""
    if kind == "none":
        return "none"
    if device.type == "cpu":
        quantize_cpu_int8(model)
        return "int8"
    dtype = model.norm.weight.dtype
    if kind == "nf4":
        quantize_nf4(model, dtype)
        return "nf4"
    quantize_torchao(model, kind, group_size)
    return kind


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights read per forward of ``model``'s layers, whatever their storage."""
    total = 0
    for module in model.modules():
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if callable(tensor):
                tensor = tensor()
            if isinstance(tensor, torch.Tensor):
                try:
                    total += _storage_bytes(tensor)
                except Exception:
                    total += tensor.numel() * tensor.element_size()
    return total


def _storage_bytes(tensor: torch.Tensor) -> int:
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_storage_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()
