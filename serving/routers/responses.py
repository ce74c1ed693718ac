"""Shaping a ``SynthesisStream`` into an HTTP response: whole file, audio stream, or SSE."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import numpy as np
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Send

from engine.telemetry import figure
from serving.errors import error_body
from serving.schemas import AudioFormat, ErrorBody
from serving.services.audio import MEDIA_TYPES, encode_all, make_encoder
from serving.services.captions import WordTime
from serving.services.speech import SpeechService
from serving.services.synthesis import RequestStats, SynthesisStream

log = logging.getLogger(__name__)

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's code for "the client closed the request"; nobody reads it
METRIC_HEADERS = (
    "x-latency-ms",
    "x-ttfa-ms",
    "x-peak-vram-mb",
    "x-gpu-util-pct",
    "x-rtf",
    "x-seed",
    "x-words",
    "x-alignment",
)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 429, 503)
}
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {media: {} for media in sorted(set(MEDIA_TYPES.values()))},
        "description": "audio",
    },
    **ERROR_RESPONSES,
}


def metric_headers(stats: RequestStats) -> dict[str, str]:
    """Per-request figures; GPU ones read ``n/a`` on CPU (absent, not zero)."""
    s = stats.summary()
    return {
        "x-latency-ms": figure(s["latency_ms"], ".1f"),
        "x-ttfa-ms": figure(s["ttfa_ms"], ".1f"),
        "x-peak-vram-mb": figure(s["peak_vram_mb"], ".1f"),
        "x-gpu-util-pct": figure(s["gpu_util_pct"], ".1f"),
        "x-rtf": figure(s["rtf"], ".3f"),
        "x-seed": str(stats.seed),
    }


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None once the client has gone; ``work`` is then cancelled, which
    cancels its job on the worker (even mid-generation) and counts the request cancelled."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    log.info("client disconnected; generation cancelled")
    return None


class _StreamFailed(Exception):
    """Generation failed after the response started; ``body`` is the stable error body."""

    def __init__(self, body: dict[str, str]) -> None:
        super().__init__(body["message"])
        self.body = body


async def _encoded(stream: SynthesisStream, fmt: str) -> AsyncIterator[bytes]:
    """Encoded audio, ending with the encoder's trailer only if generation succeeded."""
    encoder = make_encoder(fmt, stream.stats.sample_rate)
    try:
        async for audio in stream:
            if data := encoder.encode(audio):
                yield data
        yield encoder.finish()
    except Exception as exc:
        stream.close(outcome="error")
        raise _StreamFailed(error_body(exc, " mid-stream")[1]) from exc
    finally:
        stream.close()


class AudioStreamResponse(StreamingResponse):
    """A streamed file that is cut off, not completed, when generation fails mid-stream.

    Without the final empty chunk the server closes the connection, so an HTTP/1.1 client sees an
    incomplete chunked transfer (httpx: ``RemoteProtocolError``, curl: exit 18) instead of a
    short file that looks whole.
    """

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except _StreamFailed:
            return


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _sse(stream: SynthesisStream, fmt: str) -> AsyncIterator[str]:
    """OpenAI's speech SSE: ``speech.audio.delta`` events, then ``speech.audio.done`` on success
    or an ``error`` event (``{"type": "error", "error": <error body>}``) on failure."""
    try:
        async for data in _encoded(stream, fmt):
            if data:
                audio = base64.b64encode(data).decode()
                yield _event({"type": "speech.audio.delta", "audio": audio})
    except _StreamFailed as failed:
        yield _event({"type": "error", "error": failed.body})
        return
    frames = stream.stats.frames
    usage = {"input_tokens": 0, "output_tokens": frames, "total_tokens": frames}
    yield _event({"type": "speech.audio.done", "usage": usage, "metrics": stream.stats.summary()})


def words_header(words: list[WordTime]) -> str:
    """Word timings in a header: base64url of the captioned route's ``words`` JSON."""
    payload = json.dumps([dataclasses.asdict(word) for word in words], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


async def captioned_file(
    request: Request, stream: SynthesisStream, fmt: AudioFormat, speech: SpeechService
) -> tuple[bytes, np.ndarray, list[WordTime], str] | None:
    """The whole file, its samples, its word timings and how they were found; None when the
    client left while it was generated."""
    audio = await unless_disconnected(request, stream.collect())
    if audio is None:
        return None
    body = await run_in_threadpool(encode_all, fmt, audio, stream.stats.sample_rate)
    words, alignment = await speech.caption(stream.text, audio)
    return body, audio, words, alignment


async def audio_response(
    request: Request, stream: SynthesisStream, fmt: AudioFormat, streaming: bool
) -> Response:
    """Stream the audio as it comes, or send one file with the metric headers."""
    media = MEDIA_TYPES[fmt]
    if streaming:
        return AudioStreamResponse(
            _encoded(stream, fmt), media_type=media, headers={"x-seed": str(stream.stats.seed)}
        )
    audio = await unless_disconnected(request, stream.collect())
    if audio is None:
        return Response(status_code=CLIENT_CLOSED)
    body = await run_in_threadpool(encode_all, fmt, audio, stream.stats.sample_rate)
    return Response(body, media_type=media, headers=metric_headers(stream.stats))


def sse_response(stream: SynthesisStream, fmt: AudioFormat) -> StreamingResponse:
    return StreamingResponse(_sse(stream, fmt), media_type="text/event-stream")
