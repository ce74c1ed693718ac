"""Honest streams: every format in every response mode decodes with soundfile and PyAV, to the
same length as the raw PCM. (That a failure after the response started is reported as one, never
as a complete file or a done event, is tested on the real routes in ``test_engine_cues``.)
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.service

RATE = 44_100
TEXT = "Every format, every mode."
SEED = 7
FORMATS = ("wav", "pcm", "mp3", "opus", "flac", "aac")
MODES = ("tts_file", "tts_stream", "speech_audio", "speech_sse")
SOUNDFILE_READS = {"wav", "mp3", "opus", "flac"}  # libsndfile has no ADTS AAC reader
LOSSLESS = {"wav", "flac"}


def _sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def _fetch(client: httpx.Client, mode: str, fmt: str) -> bytes:
    """The bytes a client would save as the file, for one format in one response mode."""
    if mode.startswith("tts"):
        form = {"text": TEXT, "seed": str(SEED), "format": fmt, "stream": str(mode == "tts_stream")}
        response = client.post("/tts", data=form)
        assert response.status_code == 200, response.text
        return response.content
    body = {"input": TEXT, "seed": SEED, "response_format": fmt}
    if mode == "speech_audio":
        response = client.post("/v1/audio/speech", json=body)
        assert response.status_code == 200, response.text
        return response.content
    response = client.post("/v1/audio/speech", json={**body, "stream_format": "sse"})
    assert response.status_code == 200, response.text
    events = _sse_events(response.text)
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"], events[-1:]
    deltas = [e["audio"] for e in events if e["type"] == "speech.audio.delta"]
    return b"".join(base64.b64decode(d) for d in deltas)


def _pyav(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(frames), stream.rate


def _flac_total_samples(data: bytes) -> int:
    """STREAMINFO's 36-bit total sample count (0 would mean "unknown")."""
    assert data[:4] == b"fLaC"
    info = data[8:42]
    return ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")


@pytest.mark.parametrize("mode", MODES)
def test_every_format_decodes_with_soundfile_and_pyav(client: httpx.Client, mode: str) -> None:
    files = {fmt: _fetch(client, mode, fmt) for fmt in FORMATS}
    pcm = np.frombuffer(files["pcm"], dtype="<i2")  # raw s16le: the length is the arithmetic
    assert len(files["pcm"]) % 2 == 0 and pcm.size > 0
    seconds = pcm.size / RATE
    for fmt in FORMATS[2:] + ("wav",):
        data = files[fmt]
        decoded, rate = _pyav(data)
        assert decoded.size / rate == pytest.approx(seconds, abs=0.1), f"PyAV {fmt} {mode}"
        if fmt in SOUNDFILE_READS:
            audio, rate = sf.read(io.BytesIO(data), dtype="int16")
            assert len(audio) / rate == pytest.approx(seconds, abs=0.1), f"soundfile {fmt} {mode}"
            if fmt in LOSSLESS:  # same samples; ffmpeg rounds float to s16 by 1 LSB otherwise
                assert audio.shape == pcm.shape, f"soundfile {fmt} {mode}"
                assert np.abs(audio.astype(int) - pcm).max() <= 1, f"soundfile {fmt} {mode}"
    assert _flac_total_samples(files["flac"]) == pcm.size
