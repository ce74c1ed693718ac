"""K/V an earlier request left behind never reaches the next one, even when it is not finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.dual_ar import grouped_attention
from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile


def test_a_masked_position_holding_nan_still_poisons_attention() -> None:
    """Why stale K/V must be cleared: attention masks a position but still multiplies its value
    by a zero weight, and 0 x NaN is NaN, in fp32 and bf16 alike."""
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, 4, 1, 8, dtype=dtype)
        k = torch.randn(1, 2, 16, 8, dtype=dtype)
        v = torch.randn(1, 2, 16, 8, dtype=dtype)
        mask = torch.zeros(1, 1, 1, 16, dtype=torch.bool)
        mask[..., :4] = True
        assert torch.isfinite(grouped_attention(q, k, v, mask)).all()
        v[:, :, 10] = float("nan")
        assert torch.isnan(grouped_attention(q, k, v, mask)).all()


def test_a_non_finite_value_left_in_the_kv_caches_does_not_reach_the_next_request(
    tiny_checkpoint: Path,
) -> None:
    """NaN placed where the next request attends but never writes (the end of its KV bucket in
    every slow layer, the last fast position) changes nothing: same seed, same audio."""
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
    clean = engine.synthesize("Hello there.", fixed_frames=6, seed=0)
    bucket = engine.last_report.kv_bucket
    model = engine.decoder.model
    for layer in model.layers:
        layer.attention.kv_cache.k_cache[:, :, bucket - 1] = float("nan")
        layer.attention.kv_cache.v_cache[:, :, bucket - 1] = float("nan")
    for layer in model.fast_layers:
        layer.attention.kv_cache.v_cache[:, :, -1] = float("nan")
    engine.semantic_cache.clear()  # the same seed would otherwise be answered from the cache

    again = engine.synthesize("Hello there.", fixed_frames=6, seed=0)

    assert not engine.last_report.semantic_cache_hit
    assert np.isfinite(again).all()
    assert np.array_equal(again, clean)
