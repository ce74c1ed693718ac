"""Honest streams: every format in every response mode decodes with soundfile and PyAV, and a
failure after the response started is reported as one, never as a complete file or a done event.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI, Request, Response

from engine.errors import RequestError
from serving.errors import install_error_handlers
from serving.routers.responses import audio_response, sse_response
from serving.services.synthesis import RequestStats, SynthesisStream
from serving.services.worker import EngineWorker, Job

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


# A mid-stream failure, forced on a real worker thread and served by a real uvicorn in-process.

CHUNK = np.full(RATE // 2, 0.25, dtype=np.float32)  # half a second: several FLAC blocks


def _chunks_then(failure: str) -> Callable[[Any, Job], None]:
    """A job that emits one chunk, then fails as told (or emits a second one and succeeds)."""

    def run(_engine: Any, job: Job) -> None:
        job.emit(CHUNK)
        if failure == "bug":
            raise RuntimeError("the codec blew up after the first chunk")
        if failure == "request":
            raise RequestError("the second chunk cannot be spoken")
        job.emit(CHUNK)

    return run


def _failing_app(outcomes: list[str]) -> tuple[FastAPI, EngineWorker[str]]:
    worker: EngineWorker[str] = EngineWorker(lambda: "engine", queue_size=4)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/speak/{fmt}")
    async def speak(request: Request, fmt: str, failure: str, sse: bool = False) -> Response:
        stats = RequestStats(received_at=time.perf_counter(), sample_rate=RATE, seed=0)
        job = worker.submit(_chunks_then(failure))
        stream = await SynthesisStream(job, stats, lambda _s, o: outcomes.append(o)).begin()
        if sse:
            return sse_response(stream, fmt)
        return await audio_response(request, stream, fmt, streaming=True)

    return app, worker


@pytest.fixture(scope="module")
def failing() -> Iterator[tuple[str, list[str]]]:
    """The URL of an in-process uvicorn serving ``/speak/{fmt}``, and the outcomes it recorded."""
    outcomes: list[str] = []
    app, worker = _failing_app(outcomes)
    worker.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", outcomes
    server.should_exit = True
    thread.join(10)
    worker.stop()


def _stream_bytes(url: str, **params: str) -> tuple[bytes, Exception | None]:
    received = bytearray()
    try:
        with httpx.stream("POST", url, params=params, timeout=30) as response:
            assert response.status_code == 200
            for part in response.iter_raw():
                received += part
    except httpx.RemoteProtocolError as exc:
        return bytes(received), exc
    return bytes(received), None


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "flac"])
def test_raw_stream_that_fails_is_cut_off_not_completed(
    failing: tuple[str, list[str]], fmt: str
) -> None:
    url, outcomes = failing
    outcomes.clear()
    data, cut = _stream_bytes(f"{url}/speak/{fmt}", failure="none")
    assert cut is None and outcomes == ["ok"]  # the control: a success ends normally
    if fmt == "pcm":
        assert len(data) == 2 * 2 * CHUNK.size
    else:
        assert _pyav(data)[0].size >= 2 * CHUNK.size

    outcomes.clear()
    data, cut = _stream_bytes(f"{url}/speak/{fmt}", failure="bug")
    assert isinstance(cut, httpx.RemoteProtocolError), f"{fmt}: a failed stream ended cleanly"
    assert outcomes == ["error"]
    if fmt in ("wav", "pcm"):  # what came before the failure came through, and nothing after
        assert len(data) == 2 * CHUNK.size + (44 if fmt == "wav" else 0)


@pytest.mark.parametrize(
    ("failure", "error", "kind"),
    [
        ("bug", "internal_error", "server_error"),
        ("request", "invalid_input", "invalid_request_error"),
    ],
)
def test_sse_failure_sends_an_error_event_and_no_done(
    failing: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    failure: str,
    error: str,
    kind: str,
) -> None:
    url, outcomes = failing
    outcomes.clear()
    response = httpx.post(
        f"{url}/speak/wav", params={"failure": failure, "sse": "true"}, timeout=30
    )
    events = _sse_events(response.text)
    types = [e["type"] for e in events]
    assert types[-1] == "error" and "speech.audio.done" not in types, types
    assert types.count("speech.audio.delta") == 1
    body = events[-1]["error"]
    assert (body["error"], body["type"]) == (error, kind) and body["message"]
    assert outcomes == ["error"]
    if failure == "bug":  # the id in the event finds the traceback in the log
        assert body["request_id"] in caplog.text and "the codec blew up" in caplog.text


def test_sse_success_ends_with_done_and_a_readable_flac(failing: tuple[str, list[str]]) -> None:
    url, outcomes = failing
    outcomes.clear()
    response = httpx.post(
        f"{url}/speak/flac", params={"failure": "none", "sse": "true"}, timeout=30
    )
    events = _sse_events(response.text)
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    assert "error" not in [e["type"] for e in events]
    flac = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    audio, rate = sf.read(io.BytesIO(flac))
    assert rate == RATE and audio.size == 2 * CHUNK.size
    assert _flac_total_samples(flac) == 2 * CHUNK.size
    assert outcomes == ["ok"]
