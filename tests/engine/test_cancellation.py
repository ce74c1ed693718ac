"""A caller can stop generation between blocks, in whole-file and streaming synthesis alike."""

from __future__ import annotations

import pytest

from engine.errors import GenerationCancelled


def _stop_after(checks: int) -> tuple[list[int], object]:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > checks

    return asked, should_stop


def test_whole_file_synthesis_stops_within_one_block(engine) -> None:
    asked, should_stop = _stop_after(2)
    with pytest.raises(GenerationCancelled, match="stopped after 16 frames"):
        engine.synthesize("Stop me.", fixed_frames=400, seed=11, should_stop=should_stop)
    assert len(asked) == 3  # first block, one more, then the stop: not 400 / 8 checks


def test_streaming_synthesis_stops_too(engine) -> None:
    """The first chunk (``first_chunk_size`` = 4 frames, one block) is decoded and yielded; the
    check after the next block stops the stream before any further chunk."""
    asked, should_stop = _stop_after(1)
    first = engine.active_profile.first_chunk_size
    chunks = []
    with pytest.raises(GenerationCancelled, match=f"stopped after {first} frames"):
        for chunk in engine.synthesize_stream(
            "Stop me.", fixed_frames=400, seed=12, should_stop=should_stop
        ):
            chunks.append(chunk)
    assert [len(c) for c in chunks] == [first * 2048]
    assert len(asked) == 2  # after the first block and the next: not once per 400 / 8 blocks


def test_no_check_means_the_whole_budget(engine) -> None:
    audio = engine.synthesize("Run on.", fixed_frames=24, seed=13, should_stop=lambda: False)
    assert len(audio) == 24 * 2048
