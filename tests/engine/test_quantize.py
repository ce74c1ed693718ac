"""CPU int4 is tinygemm's scheme on aten's kernel; every scheme shrinks only the transformer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.checkpoint import CheckpointFolder
from engine.quantize import Int4Linear, Int8Linear, apply_quantization, quantize_int4_groups
from engine.upstream import load_dual_ar


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
