"""The compiled codec decodes at a few fixed lengths, all built by warm-up, and sounds like eager.

A compiled decode used to crash on its first call (upstream's numpy frame length became a tensor
guard that fails under inference mode), and, made dynamic, recompiled for every new window shape
inside requests. Now every decode is right-padded to one of ``decode_lengths``; the codec is
causal, so the real frames decode as they would alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.codec import decode_lengths
from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile


def test_streamed_windows_and_whole_files_pad_to_a_short_ladder() -> None:
    """Windows up to left context + chunk (48 frames) get powers of two from the first chunk and
    that window; whole files double from it to a request's frame budget (1,024 frames by
    default), or to the largest warmed KV bucket where that is smaller."""
    assert decode_lengths(EngineProfile()) == (4, 8, 16, 32, 48, 96, 192, 384, 768, 1536)
    assert decode_lengths(EngineProfile(max_seq_len=512)) == (4, 8, 16, 32, 48, 96, 192, 384, 512)
    short = EngineProfile(max_seq_len=512, warmup_buckets=[256])
    assert decode_lengths(short) == (4, 8, 16, 32, 48, 96, 192, 256)
    wide = EngineProfile(chunk_size=64, first_chunk_size=64, codec_left_context=0, max_seq_len=256)
    assert decode_lengths(wide) == (64, 128, 256)


def test_padding_never_costs_more_than_twice_the_frames_beyond_the_first_chunk(
    compiled_codec_engine: OptimizedFishSpeech,
) -> None:
    """Past the warmed lengths the ladder keeps doubling (compiled when first met)."""
    codec = copy.copy(compiled_codec_engine.codec)  # it records the lengths it meets
    for frames in range(1, 4 * codec.lengths[-1]):
        assert codec.padded_length(frames) <= max(2 * frames, codec.lengths[0]), frames


@pytest.fixture(scope="module")
def compiled_codec_engine(tiny_checkpoint: Path) -> OptimizedFishSpeech:
    """The compiled codec on Dynamo's eager backend: capture and guards are what is checked."""
    real_compile = torch.compile

    def eager_compile(fn: Any, **options: Any) -> Any:
        options.pop("mode", None)
        return real_compile(fn, backend="eager", **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", eager_compile)
        torch._dynamo.reset()
        profile = EngineProfile(compile_codec="default", max_seq_len=512, warmup_buckets=[256])
        engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, profile)
    return engine


def test_compiled_decode_matches_eager_at_every_length_without_compiling_after_warmup(
    compiled_codec_engine: OptimizedFishSpeech, engine: OptimizedFishSpeech
) -> None:
    compiled = compiled_codec_engine
    counters.clear()
    compiled.codec.warm()
    assert counters["stats"]["unique_graphs"] == len(compiled.codec.lengths)
    counters.clear()
    codes = torch.randint(0, 1024, (10, 256), generator=torch.Generator().manual_seed(0))
    for frames in (1, 3, 4, 5, 17, 33, 48, 49, 100, 256):
        expected = engine.codec.decode(codes[:, :frames])
        audio = compiled.codec.decode(codes[:, :frames])
        assert audio.shape == (frames * engine.samples_per_frame,)
        np.testing.assert_allclose(audio, expected, atol=1e-5, err_msg=f"{frames} frames")
    for start, end in ((0, 4), (4, 20), (20, 36), (36, 52), (52, 60)):  # a stream's windows
        window = compiled.codec.decode_window(codes, start, end).numpy()
        np.testing.assert_allclose(
            window, engine.codec.decode_window(codes, start, end).numpy(), atol=1e-5
        )
    assert counters["stats"]["unique_graphs"] == 0


def test_a_stream_and_a_whole_file_decode_nothing_new_after_warmup(
    compiled_codec_engine: OptimizedFishSpeech,
) -> None:
    compiled = compiled_codec_engine
    compiled.warmup()
    counters.clear()
    chunks = list(compiled.synthesize_stream("Hello there, a stream.", fixed_frames=60, seed=3))
    whole = compiled.synthesize("Hello there, a whole file.", fixed_frames=37, seed=4)
    assert sum(len(c) for c in chunks) == 60 * compiled.samples_per_frame
    assert len(whole) == 37 * compiled.samples_per_frame
    assert counters["stats"]["unique_graphs"] == 0
