"""Reference decoding is bounded: an hour of compressed silence is refused from its header, and a
file whose header states no length (or a wrong one) stops decoding at about the limit.

Peak memory is measured with tracemalloc, which sees every numpy sample buffer (the old decoder
held the whole file: ~230 MB for one hour at 16 kHz).
"""

from __future__ import annotations

import io
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

from engine.audio_io import (
    MAX_REFERENCE_SECONDS,
    MAX_SOURCE_RATE,
    SAMPLE_RATE,
    AudioInputError,
    decode_audio,
)

HOUR = 3600
MB = 2**20


def silent(fmt: str, rate: int, seconds: int, subtype: str | None = None) -> bytes:
    """``seconds`` of silence written a minute at a time, so the test itself stays small."""
    buffer = io.BytesIO()
    minute = np.zeros(rate * 60, dtype=np.float32)
    with sf.SoundFile(buffer, "w", rate, 1, format=fmt, subtype=subtype) as out:
        for _ in range(seconds // 60):
            out.write(minute)
        out.write(minute[: rate * (seconds % 60)])
    return buffer.getvalue()


def without_length(flac: bytes) -> bytes:
    """The FLAC as a streaming encoder writes it: STREAMINFO's 36-bit sample count is 0."""
    assert flac[:4] == b"fLaC"
    data = bytearray(flac)
    data[21] &= 0xF0  # byte 21's low nibble and bytes 22-25 hold the total sample count
    data[22:26] = bytes(4)
    return bytes(data)


def adts_noise_then_silence(rate: int, noise_s: int, silence_s: int) -> bytes:
    """ADTS AAC has no length field: its length is estimated from the bit rate of the loud start,
    so it claims far less than it holds."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        stream.bit_rate = 64_000
        noise = np.random.default_rng(0).uniform(-0.5, 0.5, rate * noise_s)
        minute = np.zeros(rate * 60)
        for block in [noise, *[minute] * (silence_s // 60)]:
            frame = av.AudioFrame.from_ndarray(
                block.astype(np.float32)[None], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def refusal_and_peak(data: bytes) -> tuple[str, int]:
    """Why ``data`` was refused, and the peak bytes allocated (numpy buffers included) meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(AudioInputError) as refused:
            decode_audio(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(refused.value), peak


def limit_bytes(rate: int) -> int:
    """float32 samples of one limit-long mono reference at ``rate``."""
    return int(MAX_REFERENCE_SECONDS * rate) * 4


@pytest.mark.parametrize(
    "fmt, rate, subtype",
    [
        ("FLAC", 44_100, None),
        ("FLAC", 16_000, None),
        ("OGG", 8_000, None),
        ("WAV", 8_000, "PCM_U8"),
    ],
)
def test_an_hour_of_silence_is_refused_from_the_header(
    fmt: str, rate: int, subtype: str | None
) -> None:
    bomb = silent(fmt, rate, HOUR, subtype)
    reason, peak = refusal_and_peak(bomb)
    assert peak < 2 * MB, f"{peak / MB:.1f} MB allocated to refuse {len(bomb)} bytes of {fmt}"
    assert reason == "reference audio is 3600.0 s; the limit is 90 s"


def test_a_flac_without_length_stops_decoding_at_the_limit() -> None:
    rate = 16_000
    bomb = without_length(silent("FLAC", rate, HOUR))
    assert sf.info(io.BytesIO(bomb)).frames == 2**63 - 1  # libsndfile: length unknown
    reason, peak = refusal_and_peak(bomb)
    # It decoded about the limit (so the count, not the header, refused it) and nothing more.
    assert 0.5 * limit_bytes(rate) < peak < 1.5 * limit_bytes(rate) + MB, peak / MB
    assert reason == "reference audio is longer than 90 s; the limit is 90 s"


def test_an_underestimated_adts_stream_stops_decoding_at_the_limit() -> None:
    rate = 8_000
    bomb = adts_noise_then_silence(rate, noise_s=10, silence_s=HOUR)
    with av.open(io.BytesIO(bomb)) as container:
        claimed = container.duration / av.time_base
    assert claimed < MAX_REFERENCE_SECONDS, claimed  # the header lies: 1 h claims ~77 s
    reason, peak = refusal_and_peak(bomb)
    assert 0.5 * limit_bytes(rate) < peak < 1.5 * limit_bytes(rate) + MB, peak / MB
    assert reason == "reference audio is longer than 90 s; the limit is 90 s"


def test_a_flac_without_length_under_the_limit_decodes_like_one_with_it() -> None:
    tone = 0.3 * np.sin(np.arange(3 * 22_050) / 22_050 * 2 * np.pi * 330).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, tone, 22_050, format="FLAC")
    with_length = decode_audio(buffer.getvalue())
    assert np.array_equal(decode_audio(without_length(buffer.getvalue())), with_length)
    assert len(with_length) == 3 * SAMPLE_RATE


def test_a_lower_limit_is_applied_the_same_way() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16_000 * 31, dtype=np.float32), 16_000, format="WAV")
    with pytest.raises(AudioInputError, match="the limit is 30 s"):
        decode_audio(buffer.getvalue(), max_seconds=30)
    assert len(decode_audio(buffer.getvalue(), max_seconds=31.5)) == 31 * SAMPLE_RATE


def test_sample_rates_above_the_ceiling_are_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1000, dtype=np.float32), 2 * MAX_SOURCE_RATE, format="WAV")
    with pytest.raises(AudioInputError, match=f"above the supported {MAX_SOURCE_RATE} Hz"):
        decode_audio(buffer.getvalue())
