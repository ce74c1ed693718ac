"""``codec_thread``: a stream's chunks after the first are decoded to audio on a thread of their
own (one core) while the next frames are generated, and the stream is the same audio, in order."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.engine import OptimizedFishSpeech, one_core_thread
from engine.profile import EngineProfile, Hardware, resolve_profile

TEXT = "The codec runs beside the decoder."


def test_the_codec_thread_runs_on_one_core_and_leaves_every_other_thread_alone() -> None:
    before = torch.get_num_threads()
    assert before > 1, "needs a machine with two cores or more"
    pool = one_core_thread("probe")
    try:
        assert pool.submit(torch.get_num_threads).result() == 1
        assert torch.get_num_threads() == before
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [before]  # threads started afterwards get the process's count
    finally:
        pool.shutdown()


@pytest.fixture(scope="module")
def threaded(tiny_checkpoint: Path) -> OptimizedFishSpeech:
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(codec_thread=True))
    yield engine
    engine.close()


def test_a_stream_decodes_on_the_codec_thread_into_the_same_audio(
    threaded: OptimizedFishSpeech, engine: OptimizedFishSpeech
) -> None:
    names: list[str] = []
    open_stream = threaded.codec.open_stream

    def recording_stream():
        decode = open_stream()

        def recording(*args):
            names.append(threading.current_thread().name)
            return decode(*args)

        return recording

    threaded.codec.open_stream = recording_stream
    try:
        chunks = list(threaded.synthesize_stream(TEXT, fixed_frames=40, seed=2))
    finally:
        del threaded.codec.open_stream
    assert len(names) == len(chunks) == 4  # 4 + 16 + 16 + 4 frames
    # The first chunk inline (a listener is waiting for it), the rest beside the decoder.
    assert names[0] == threading.current_thread().name
    assert all(name.startswith("codec") for name in names[1:])
    inline = np.concatenate(list(engine.synthesize_stream(TEXT, fixed_frames=40, seed=2)))
    # The same computation on one thread instead of two: oneDNN splits its sums differently.
    np.testing.assert_allclose(np.concatenate(chunks), inline, rtol=0, atol=1e-6)
    assert threaded.last_report.codec_s > 0


def test_cuda_overlaps_on_streams_not_a_codec_thread() -> None:
    cuda = Hardware("cuda", "NVIDIA GeForce RTX 4060", (8, 9), False)
    active, fallbacks = resolve_profile(EngineProfile(codec_thread=True), cuda)
    assert not active.codec_thread
    assert [f.knob for f in fallbacks] == ["codec_thread"]
