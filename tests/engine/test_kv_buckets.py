"""KV length buckets, frame budgets and the voice prefix cache.

A request attends over the smallest 256 x 2^k bucket that holds its prompt and frames; the default
cache holds the longest accepted reference plus a full frame budget, and a request that would
overflow it gets fewer frames with a warning instead of an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.audio_io import MAX_REFERENCE_SECONDS, SAMPLE_RATE
from engine.caches import PrefixKVCache
from engine.engine import OptimizedFishSpeech
from engine.profile import DEFAULT_MAX_SEQ_LEN, MAX_REFERENCE_FRAMES, EngineProfile, kv_bucket
from harness.bench.rows import reference_signal

TEXT = "A voice saved once is reused for every request."


@pytest.mark.parametrize(
    "tokens, limit, bucket",
    [(1, 4096, 256), (256, 4096, 256), (257, 4096, 512), (1300, 4096, 2048), (5000, 4096, 4096)],
)
def test_bucket_is_the_smallest_power_of_two_multiple_of_256_that_fits(
    tokens: int, limit: int, bucket: int
) -> None:
    assert kv_bucket(tokens, limit) == bucket


def test_default_cache_holds_a_90_s_reference_and_a_full_frame_budget() -> None:
    assert int(np.ceil(MAX_REFERENCE_SECONDS * SAMPLE_RATE / 2048)) == MAX_REFERENCE_FRAMES
    assert DEFAULT_MAX_SEQ_LEN == 4096 >= MAX_REFERENCE_FRAMES + 1024


def test_requests_attend_over_the_bucket_their_length_needs(engine) -> None:
    engine.synthesize(TEXT, fixed_frames=4, seed=0)
    assert engine.last_report.kv_bucket == 256
    engine.synthesize(TEXT, fixed_frames=300, seed=0)
    assert engine.last_report.kv_bucket == 512


def test_a_60_s_reference_synthesizes_with_the_default_profile(
    tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tiny checkpoint allows 2,048 positions: 1,292 reference frames + 1,024 new frames do
    not fit, so the frame budget is clamped with one warning instead of failing."""
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
    with caplog.at_level(logging.WARNING, logger="engine.generation"):
        audio = engine.synthesize(TEXT, reference_signal(60.0), "A long reference.", seed=3)
    clamps = [r for r in caplog.records if "max_new_tokens 1024 ->" in r.getMessage()]
    assert len(clamps) == 1
    assert len(audio) > 0 and engine.last_report.kv_bucket == engine.decoder.max_seq_len == 2048


def test_a_prompt_that_alone_overflows_the_cache_is_refused_by_name(tiny_checkpoint: Path) -> None:
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_seq_len=512))
    with pytest.raises(ValueError, match=r"prompt \(\d+ tokens\) does not fit max_seq_len 512"):
        engine.synthesize(TEXT, reference_signal(30.0), "A reference.")


def count_prefills(engine: OptimizedFishSpeech) -> list[tuple[int, int]]:
    """Record (tokens, first position) of every prefill ``engine`` runs from now on."""
    prefilled: list[tuple[int, int]] = []
    prefill = engine.decoder._prefill

    def counting(prompt: torch.Tensor, positions: torch.Tensor, bucket: int) -> torch.Tensor:
        prefilled.append((prompt.shape[-1], int(positions[0])))
        return prefill(prompt, positions, bucket)

    engine.decoder._prefill = counting
    return prefilled


def test_a_saved_voice_prefills_only_the_new_text_and_generates_the_same_frames(
    tiny_checkpoint: Path,
) -> None:
    """The second request with a voice restores the voice's K/V and prefills only the tokens after
    it (``prompt_len - prefix_len`` of them, from position ``prefix_len``), yet generates what a
    cold engine, prefilling the whole prompt, generates."""
    reference = reference_signal(5.0)
    cold = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(prefix_cache_mb=0))
    cold_prefills = count_prefills(cold)
    expected = cold.synthesize(TEXT, reference, "The reference.", fixed_frames=12, seed=7)
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
    prefills = count_prefills(engine)
    engine.synthesize("Something else first.", reference, "The reference.", fixed_frames=4, seed=1)
    assert not engine.last_report.prefix_cache_hit
    slow = engine.decoder.model.layers[0].attention.kv_cache
    codes = engine.reference_codes(reference)[0]
    prompt = engine.build_prompt(TEXT, codes, "The reference.")
    prompt_len = prompt.shape[1]
    prefix_len = engine.voice_prefix_len(prompt, codes, "The reference.")
    saved = slow.k_cache[:, :, :prefix_len].clone()
    assert 0 < prefix_len < prompt_len
    prefills.clear()
    got = engine.synthesize(TEXT, reference, "The reference.", fixed_frames=12, seed=7)
    assert engine.last_report.prefix_cache_hit
    assert prefills == [(prompt_len - prefix_len, prefix_len)]  # only the new text
    assert cold_prefills == [(prompt_len, 0)]  # without the cache: the whole prompt
    assert torch.equal(slow.k_cache[:, :, :prefix_len], saved)
    assert np.allclose(got, expected, atol=1e-5)
    stats = engine.decoder.prefix_cache.stats()
    assert stats["hits"] == 1 and 0 < stats["bytes"] <= stats["limit_bytes"]


def test_prefix_cache_evicts_the_least_recent_voice_to_stay_within_its_bytes() -> None:
    def state(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8))]

    cache = PrefixKVCache(limit_bytes=1000)
    cache.put("a", state(200))
    cache.put("b", state(200))
    assert cache.get("a") is not None  # "b" is now the least recent
    cache.put("c", state(200))
    assert cache.get("b") is None and cache.get("a") is not None and cache.bytes == 800
    cache.put("huge", state(600))
    assert cache.get("huge") is None and cache.bytes == 800
