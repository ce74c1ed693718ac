"""CPU int4 is tinygemm's scheme on aten's kernel; every scheme shrinks only the transformer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fish_speech.models.text2semantic.llama import DualARModelArgs, TransformerBlock
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from engine.model.checkpoint import CheckpointFolder
from engine.model.quantize import Int4Linear, Int8Linear, apply_quantization, quantize_int4_groups
from engine.model.synthetic import S1_MINI_CONFIG
from engine.model.upstream import load_dual_ar


def dequantize(codes: torch.Tensor, scales_and_zeros: torch.Tensor, group: int) -> torch.Tensor:
    scales, zeros = scales_and_zeros.transpose(0, 1).unbind(-1)  # [out, groups] each
    grouped = codes.reshape(codes.shape[0], -1, group).float() - 8
    return (grouped * scales[..., None] + zeros[..., None]).reshape(codes.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_computes_with_the_dequantized_weight(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True).to(dtype)
    q = Int4Linear(linear, group_size=64)
    codes, scales_and_zeros = quantize_int4_groups(linear.weight.detach(), 64)
    weight = dequantize(codes, scales_and_zeros.to(dtype).float(), 64)
    x = torch.randn(2, 3, 256, dtype=dtype)
    expected = x.float() @ weight.T + linear.bias.float()
    got = q(x)
    assert got.shape == (2, 3, 96) and got.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(got.float(), expected, atol=tolerance * expected.abs().max().item())
    error = (weight - linear.weight.float()).norm() / linear.weight.float().norm()
    assert 0.02 < error < 0.15  # 4 bits per weight: a real, bounded quantization error


def test_int8_linear_computes_with_the_per_channel_dequantized_weight() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False).to(torch.bfloat16)
    q = Int8Linear(linear)
    weight = q.weight.float() * q.scales.float()[:, None]
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() >= 127
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    expected = x.float() @ weight.T
    assert torch.allclose(q(x).float(), expected, atol=2e-2 * expected.abs().max().item())
    error = (weight - linear.weight.float()).norm() / linear.weight.float().norm()
    assert 0.001 < error < 0.02  # 8 bits per weight: small but real


def test_int4_codes_span_each_group_min_to_max() -> None:
    weight = torch.linspace(-1, 1, 128).reshape(2, 64)
    codes, scales_and_zeros = quantize_int4_groups(weight, 64)
    assert codes.min() == 0 and codes.max() == 15
    assert torch.allclose(dequantize(codes, scales_and_zeros, 64)[:, [0, -1]], weight[:, [0, -1]])


def scheme_of(layer: nn.Module) -> str:
    if isinstance(layer, torch.ao.nn.quantized.dynamic.Linear):
        return "dynamic int8"
    return f"{type(layer).__name__}({type(layer.weight).__name__})"


@pytest.mark.parametrize(
    "precision, kind, layer_type",
    [
        (torch.float32, "int8", "dynamic int8"),
        (torch.bfloat16, "int8", "Int8Linear(Tensor)"),
        (torch.bfloat16, "int4", "Int4Linear(Tensor)"),
        (torch.bfloat16, "nf4", "Linear4bit(Params4bit)"),
    ],
)
def test_cpu_schemes_quantize_the_layers_and_leave_the_heads_float(
    tiny_checkpoint: Path, precision: torch.dtype, kind: str, layer_type: str
) -> None:
    folder = CheckpointFolder.open(tiny_checkpoint)
    model = load_dual_ar(folder, torch.device("cpu"), precision, 256)
    heads = model.output.weight.clone()
    apply_quantization(model, kind, torch.device("cpu"), group_size=64)
    assert scheme_of(model.layers[0].attention.wqkv) == layer_type
    assert scheme_of(model.fast_layers[0].feed_forward.w1) == layer_type
    assert torch.equal(model.output.weight, heads)


class Dispatched(TorchDispatchMode):
    """Records each aten op, and each dtype cast as (from, to)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.casts: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.ops.append(name)
        if name in ("aten.to", "aten._to_copy") and isinstance(out, torch.Tensor):
            self.casts.append((args[0].dtype, out.dtype))
        return out


class OneLayerModel(nn.Module):
    """What ``apply_quantization`` reads of a DualAR model: its layer stacks and final norm."""

    def __init__(self, cfg: DualARModelArgs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerBlock(cfg)])
        self.fast_layers = nn.ModuleList()
        self.norm = nn.RMSNorm(cfg.dim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_int8_is_the_form_inductor_fuses_not_aten_int8_kernel(dtype: torch.dtype) -> None:
    """A real-size S1-mini layer quantized for CUDA (fake tensors): every linear layer is
    ``Int8Linear`` holding int8 codes, and a decode-step call is
    gpt-fast's ``linear(x, codes.to(dtype)) * scales``, the pattern torch.compile fuses into one
    GEMV reading int8; never aten's CUDA ``_weight_int8pack_mm`` (one thread per output, fp32
    loop over K: slower than a bf16 GEMV). Eager CUDA int8 is refused by ``resolve_profile``."""
    cfg = DualARModelArgs(**S1_MINI_CONFIG)
    before = torch.get_default_dtype()
    with FakeTensorMode(), torch.device("cuda"):
        torch.set_default_dtype(dtype)
        try:
            model = OneLayerModel(cfg)
        finally:
            torch.set_default_dtype(before)
        apply_quantization(model, "int8", torch.device("cuda"), group_size=64)
        block = model.layers[0]
        x = torch.randn(1, 1, cfg.dim, dtype=dtype)
        with torch.inference_mode(), Dispatched() as rec:
            out = block.attention.wqkv(x)
    linears = [block.attention.wqkv, block.attention.wo, *block.feed_forward.children()]
    assert [type(layer) for layer in linears] == [Int8Linear] * 5
    assert all(layer.weight.dtype == torch.int8 for layer in linears)
    assert out.dtype == dtype and out.shape == (1, 1, block.attention.wqkv.out_features)
    assert "aten._weight_int8pack_mm" not in rec.ops
    assert rec.casts == [(torch.int8, dtype)], rec.casts
    assert {"aten.linear", "aten.mm"} & set(rec.ops) and "aten.mul" in rec.ops, rec.ops


class ClaimsCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: ``Int8Linear.forward`` takes its CUDA branch, whose
    plain torch ops then run on CPU with real numbers."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_int8_linear_gives_the_same_product_on_either_path() -> None:
    """The real CUDA branch (``linear(x, codes.to(dtype)) * scales``) and the CPU kernel
    (``_weight_int8pack_mm``) give the same product; each call ran its own branch."""
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(64, 32, bias=True).to(torch.bfloat16))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.inference_mode(), Dispatched() as cpu:
        on_cpu = q(x)
    with torch.inference_mode(), Dispatched() as cuda:
        on_cuda = q(x.as_subclass(ClaimsCuda)).as_subclass(torch.Tensor)
    assert "aten._weight_int8pack_mm" in cpu.ops
    assert "aten._weight_int8pack_mm" not in cuda.ops and cuda.casts == [(torch.int8, x.dtype)]
    assert on_cuda.dtype == on_cpu.dtype == torch.bfloat16 and on_cuda.shape == (3, 32)
    torch.testing.assert_close(on_cuda, on_cpu, rtol=2e-2, atol=2e-2)
    weight = q.weight.float() * q.scales.float()[:, None]  # what both must compute
    expected = x.float() @ weight.T + q.bias.float()
    torch.testing.assert_close(on_cuda.float(), expected, rtol=2e-2, atol=2e-2)
