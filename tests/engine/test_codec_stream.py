"""A stateful codec stream decodes each frame once and gives one-shot decoding's audio.

The tiny codec has S1-mini's layout: causal convolutions, transposed convolutions and a
window-limited transformer (128 frames) after the quantizer. Streams here run past that window,
in chunks of uneven sizes, and two streams interleave, so every carried state is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fish_speech.models.dac.modded_dac import WindowLimitedTransformer

from engine.codec import fuse_weight_norm
from engine.codec_layout import channels_last_decoder
from engine.codec_stream import CodecStream, window_mask
from engine.engine import OptimizedFishSpeech
from engine.model.checkpoint import CheckpointFolder
from engine.model.upstream import load_codec
from engine.profile import EngineProfile, Hardware, resolve_profile

pytestmark = pytest.mark.unit

CPU = Hardware("cpu", "cpu", None, False)


@pytest.fixture(scope="module")
def codec(tiny_checkpoint: Path) -> torch.nn.Module:
    codec = load_codec(CheckpointFolder(tiny_checkpoint), torch.device("cpu"), torch.float32)
    fuse_weight_norm(codec)
    channels_last_decoder(codec, stateful=True)
    return codec


def _decode(codec: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec.decoder(codec.quantizer.decode(codes[None]))[0, 0]


def _codes(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            torch.randint(0, 4096, (1, frames), generator=g),
            torch.randint(0, 1024, (9, frames), generator=g),
        ]
    )


def _streamed(stream: CodecStream, codes: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    pieces, start = [], 0
    with torch.inference_mode():
        for size in sizes:
            pieces.append(stream.decode(codes[:, start : start + size]))
            start += size
    assert start == codes.shape[1]
    return pieces


def test_the_window_mask_is_upstreams_within_a_chunk_and_across_chunks() -> None:
    upstream = WindowLimitedTransformer.make_window_limited_mask
    whole = upstream(type("T", (), {"causal": True, "window_size": 5})(), 12)
    assert torch.equal(window_mask(0, 12, 0, 5), whole)
    # Positions 7..11 with the 4 positions before them cached: the same rows, the same columns.
    assert torch.equal(window_mask(7, 5, 4, 5), whole[..., 7:12, 3:12])


def test_a_stream_past_the_attention_window_decodes_what_one_shot_decoding_does(
    codec: torch.nn.Module,
) -> None:
    assert codec.quantizer.post_module.inner.window_size == 128
    codes = _codes(150, seed=0)
    one_shot = _decode(codec, codes)
    sizes = [4, 16, 1, 7, 16, 16, 16, 16, 16, 16, 16, 10]
    pieces = _streamed(CodecStream(lambda c: _decode(codec, c)), codes, sizes)
    assert [len(p) for p in pieces] == [2048 * n for n in sizes]
    torch.testing.assert_close(torch.cat(pieces), one_shot, rtol=1e-4, atol=1e-6)


def test_two_interleaved_streams_keep_their_own_state(codec: torch.nn.Module) -> None:
    first, second = _codes(40, seed=1), _codes(40, seed=2)
    streams = [CodecStream(lambda c: _decode(codec, c)) for _ in range(2)]
    pieces: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        for start in range(0, 40, 8):
            for i, codes in enumerate((first, second)):
                pieces[i].append(streams[i].decode(codes[:, start : start + 8]))
    for i, codes in enumerate((first, second)):
        torch.testing.assert_close(
            torch.cat(pieces[i]), _decode(codec, codes), rtol=1e-4, atol=1e-6
        )


def test_without_a_stream_the_same_layers_decode_a_whole_signal(codec: torch.nn.Module) -> None:
    """Decoding outside a stream neither reads nor leaves state: twice the same codes, the same
    audio, also after a stream has run."""
    codes = _codes(20, seed=3)
    before = _decode(codec, codes)
    _streamed(CodecStream(lambda c: _decode(codec, c)), _codes(20, seed=4), [20])
    assert torch.equal(_decode(codec, codes), before)


def test_the_engine_streams_one_shot_audio_with_a_stateful_codec(
    engine: OptimizedFishSpeech,
) -> None:
    assert engine.active_profile.codec_streaming == "stateful"
    text = "Every chunk of this stream is decoded once."
    streamed = np.concatenate(list(engine.synthesize_stream(text, fixed_frames=40, seed=3)))
    report = engine.last_report
    assert report.first_chunk_audio_s == engine.active_profile.first_chunk_size * 2048 / 44100
    assert report.last_chunk_s >= report.ttfa_s and report.stream_rtf > 0
    assert report.stage_ms_per_frame()["codec_ms_per_frame"] == 1000 * report.codec_s / 40
    one_shot = engine.synthesize(text, fixed_frames=40, seed=3)
    assert streamed.shape == one_shot.shape
    assert np.max(np.abs(streamed - one_shot)) < 1e-5


def test_a_stream_refuses_chunks_out_of_order(engine: OptimizedFishSpeech) -> None:
    decode = engine.codec.open_stream()
    codes = _codes(8, seed=5)
    decode(codes, 0, 4)
    with pytest.raises(ValueError, match="at frame 4 was asked for 6"):
        decode(codes, 6, 8)


def test_stateful_streaming_needs_the_channels_last_layout_and_an_eager_codec() -> None:
    def resolved(**knobs: object) -> tuple[str, list[str]]:
        active, fallbacks = resolve_profile(EngineProfile(**knobs), CPU)
        return active.codec_streaming, [str(f) for f in fallbacks]

    assert resolved() == ("stateful", [])
    assert resolved(compile_codec="default") == ("context", [])
    assert resolved(codec_layout="upstream", codec_streaming="stateful") == (
        "context",
        [
            "codec_streaming: stateful -> context (stateful streaming runs on the "
            "channels_last codec layout)"
        ],
    )
