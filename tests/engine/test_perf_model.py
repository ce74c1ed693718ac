"""The bytes-per-frame model agrees with the bytes the loaded layers really store, per scheme."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fish_speech.models.text2semantic.llama import DualARModelArgs, KVCache
from torch import nn

from engine.engine import OptimizedFishSpeech
from engine.measure import perf_model
from engine.model.checkpoint import CheckpointFolder
from engine.model.quantize import apply_quantization
from engine.model.synthetic import S1_MINI_CONFIG
from engine.model.upstream import load_dual_ar
from engine.profile import EngineProfile


def stored_bytes(stack: nn.Module) -> int:
    """Bytes of every tensor the layers hold (KV caches aside), read off the tensors themselves."""
    held: dict[int, torch.Tensor] = {}  # holding each tensor keeps its id from being reused

    def add(t: torch.Tensor) -> None:
        held.setdefault(id(t), t)

    for module in stack.modules():
        if isinstance(module, KVCache):
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            add(tensor)
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            add(module.weight())
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:  # bitsandbytes: 8-bit absmax and its nested fp32 absmax
            add(state.absmax)
            add(state.state2.absmax)
    return sum(t.numel() * t.element_size() for t in held.values())


@pytest.mark.parametrize(
    "precision, scheme",
    [("fp32", "none"), ("bf16", "none"), ("fp32", "int8"), ("bf16", "int8"), ("bf16", "int4")],
)
def test_model_matches_the_stored_bytes_of_every_cpu_scheme(
    tiny_checkpoint: Path, precision: str, scheme: str
) -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    model = load_dual_ar(CheckpointFolder.open(tiny_checkpoint), torch.device("cpu"), dtype, 256)
    apply_quantization(model, scheme, torch.device("cpu"), group_size=32)
    cfg, fb = model.config, perf_model.FLOAT_BYTES[precision]
    assert perf_model.slow_layer_bytes(cfg, scheme, fb, 32) == stored_bytes(model.layers)
    assert perf_model.fast_layer_bytes(cfg, scheme, fb, 32) == stored_bytes(model.fast_layers)


def test_nf4_model_is_within_one_percent_of_bitsandbytes_storage(tiny_checkpoint: Path) -> None:
    model = load_dual_ar(
        CheckpointFolder.open(tiny_checkpoint), torch.device("cpu"), torch.bfloat16, 256
    )
    apply_quantization(model, "nf4", torch.device("cpu"), group_size=64)
    predicted = perf_model.slow_layer_bytes(model.config, "nf4", 2, 64)
    assert abs(predicted - stored_bytes(model.layers)) <= 0.01 * predicted


def test_engine_frame_bytes_count_the_heads_and_the_kv_bucket_it_attends(
    tiny_checkpoint: Path,
) -> None:
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
    engine.synthesize("Hello.", fixed_frames=4, seed=0)
    dec, cfg = engine.decoder, engine.decoder.model.config
    parts = engine.frame_bytes()
    assert engine.last_report.kv_bucket == 256
    heads = dec.slow_head.numel() * 4 + (cfg.num_codebooks - 1) * dec.fast_head.numel() * 4
    assert parts.heads == heads
    slow_cache = dec.model.layers[0].attention.kv_cache.k_cache
    per_position = slow_cache[:, :, :1].numel() * 4 * 2 * cfg.n_layer
    fast_kv = parts.kv_cache - 256 * per_position
    assert 0 < fast_kv < 256 * per_position
    assert engine.frame_bytes(512).kv_cache - parts.kv_cache == 256 * per_position


def test_perf_model_projects_s1_mini_within_the_byte_budgets_it_was_built_to() -> None:
    """Our own projection (``perf_model.gpu_projection``, arithmetic on the full-size config, no
    GPU measured): bf16 <= 2.2 GB a frame; int8 and int4 far less; upstream over 3x bf16.

    int8 at a full 2048 bucket is 1.21 GB: 0.94 GB of weights + 0.24 GB of K/V read in bf16.
    """
    cfg = DualARModelArgs(**S1_MINI_CONFIG)
    rows = {name: fb.total / 1e9 for name, fb in perf_model.gpu_projection(cfg).items()}
    assert rows["ours bf16 none"] <= 2.2
    assert rows["ours bf16 int8"] <= 1.25
    assert rows["ours bf16 int4"] <= 0.8
    assert rows["upstream (bf16)"] > 3 * rows["ours bf16 none"]
