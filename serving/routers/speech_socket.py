"""``WS /v1/audio/speech/stream``: text streamed in as it is written (an LLM's output), speech out.

The client sends JSON messages: optionally ``{"type": "start", "voice", "seed", "temperature",
"top_p", "speed", "normalize"}`` first, then ``{"type": "text", "text": "<delta>"}`` as the text
arrives, then ``{"type": "end"}``. A sentence is synthesised as soon as it is complete (its end
mark followed by more text, a line break, or the end message), in order, with the stream's voice
and ``seed + sentence index`` (the long-text rules). The server sends, per sentence,
``{"type": "sentence_start", "index", "text"}``, binary messages of 16-bit mono PCM at 44.1 kHz,
and ``{"type": "audio_done", "index", "samples"}``; then ``{"type": "done", "sentences"}`` and a
normal close. A sentence the model gives no audio for gets ``{"type": "error", "index", ...}``
and the stream goes on; any other failure sends ``{"type": "error", "error", "message"}`` and
closes the socket: 1008 for bad input, 1013 for a full queue or rate limit (try again later),
1011 for a server error. Bad input includes a ``text`` that is not a string, text waiting to be
spoken (received, not yet spoken) passing MAX_TEXT_CHARS, a message after ``end``, and silence
from the client for SOCKET_IDLE_TIMEOUT_S while nothing is being spoken (``idle_timeout``).
Each sentence waits in the same queue as HTTP requests; closing the socket cancels the sentence
being normalised or generated. The API key is checked, as for HTTP, from the ``Authorization``
header before the handshake: a refused handshake gets the HTTP answer a request would (401, or
429 with Retry-After for a throttled key), where the server supports it (uvicorn does), else 403.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from engine.audio_io import SAMPLE_RATE
from engine.errors import RequestError
from engine.text.sentences import complete_sentences, speakable
from serving.dependencies import Services, count_against_limit
from serving.errors import InvalidInput, ServiceError
from serving.schemas import NOT_TEXT, SEED_MAX, SpeechStreamStart, lone_surrogate
from serving.services.audio import make_encoder
from serving.services.voices import Voice

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

ROUTE = "stream"  # its label in /metrics (serving.services.metrics.ROUTES)
BAD_INPUT, SERVER_ERROR, TRY_LATER = 1008, 1011, 1013


class IdleSocket(ServiceError):
    """Nothing came from the client for SOCKET_IDLE_TIMEOUT_S while nothing was being spoken."""

    status_code = 408
    error = "idle_timeout"


@dataclass
class _Backlog:
    """The sentences waiting to be spoken, and the text received but not yet spoken (the queued
    sentences, the one being spoken, and the incomplete one), which may not pass ``limit``."""

    limit: int
    sentences: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    chars: int = 0  # queued and in-progress sentences

    @property
    def idle(self) -> bool:
        """Nothing queued or being spoken (every queued sentence has at least one character)."""
        return self.chars == 0

    def check(self, incomplete: int) -> None:
        """A 1008 as soon as the unspoken text would pass MAX_TEXT_CHARS."""
        if self.chars + incomplete > self.limit:
            raise InvalidInput(
                f"the text waiting to be spoken would pass {self.limit} characters "
                "(MAX_TEXT_CHARS): send less before its audio has come back"
            )

    async def put(self, sentence: str | None) -> None:
        self.chars += len(sentence or "")
        await self.sentences.put(sentence)

    def spoken(self, sentence: str) -> None:
        self.chars -= len(sentence)


async def _read(websocket: WebSocket) -> dict:
    try:
        message = json.loads(await websocket.receive_text())
    except (json.JSONDecodeError, KeyError) as exc:
        raise InvalidInput("every message is JSON text: start, text or end") from exc
    if not isinstance(message, dict):
        raise InvalidInput("every message is a JSON object with a type")
    if where := lone_surrogate(message):
        raise InvalidInput(NOT_TEXT.format(where=where))
    return message


async def _next(websocket: WebSocket, backlog: _Backlog, idle_s: float) -> dict:
    """The client's next message; ``IdleSocket`` once none has come for ``idle_s`` while
    nothing is being spoken (a client waiting for audio is not idle)."""
    reading = asyncio.ensure_future(_read(websocket))
    try:
        while not (await asyncio.wait({reading}, timeout=idle_s))[0]:
            if backlog.idle:
                raise IdleSocket(
                    f"no message for {idle_s:g} s (SOCKET_IDLE_TIMEOUT_S): send text or end"
                )
        return reading.result()
    finally:
        reading.cancel()


async def _listen(websocket: WebSocket, first: dict, backlog: _Backlog, idle_s: float) -> None:
    """Cut the text deltas into sentences, then a None once the client sent ``end``; after it,
    wait for the client to leave (``WebSocketDisconnect``) so a departure cancels the work."""
    buffer, message = "", first
    while True:
        kind = message.get("type")
        if kind == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise InvalidInput("a text message carries its text as a JSON string")
            backlog.check(len(buffer) + len(text))
            buffer += text
            complete, buffer = complete_sentences(buffer)
            for sentence in complete:
                if speakable(sentence):
                    await backlog.put(sentence.strip())
        elif kind == "end":
            if speakable(buffer):
                await backlog.put(buffer.strip())
            await backlog.put(None)
            break
        else:
            raise InvalidInput(f"unknown message type {kind!r}: send start, text or end")
        message = await _next(websocket, backlog, idle_s)
    if (after := await websocket.receive())["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(after.get("code", 1000))
    raise InvalidInput("nothing may follow end: wait for the audio and the done message")


async def _speak(
    websocket: WebSocket,
    services: Services,
    start: SpeechStreamStart,
    voice: Voice | None,
    backlog: _Backlog,
) -> int:
    """Synthesise each sentence in order and send its audio; the number of sentences."""
    speech = services.speech
    seed = secrets.randbelow(SEED_MAX) if start.seed is None else start.seed
    index = 0
    while (sentence := await backlog.sentences.get()) is not None:
        await websocket.send_json({"type": "sentence_start", "index": index, "text": sentence})
        encoder, samples = make_encoder("pcm", SAMPLE_RATE), 0
        try:
            stream = await speech.speak(
                sentence,
                voice=voice,
                temperature=start.temperature,
                top_p=start.top_p,
                seed=(seed + index) % SEED_MAX,
                speed=start.speed,
                normalize=start.normalize,
                chunked_decode=True,
                route=ROUTE,
            )
            async for audio in stream:
                samples += len(audio)
                await websocket.send_bytes(encoder.encode(audio))
        except RequestError as exc:  # no audio for this sentence: say so and go on
            await websocket.send_json(
                {"type": "error", "index": index, "error": "invalid_input", "message": str(exc)}
            )
        await websocket.send_json({"type": "audio_done", "index": index, "samples": samples})
        backlog.spoken(sentence)
        index += 1
    return index


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(websocket: WebSocket) -> None:
    """Text deltas in, sentence audio out, in order; see the module docstring for the protocol."""
    services: Services = websocket.app.state.services
    settings = services.settings
    idle_s = settings.socket_idle_timeout_s
    await websocket.accept()
    tasks: list[asyncio.Task] = []
    try:
        count_against_limit(websocket, services)
        backlog = _Backlog(settings.max_text_chars)
        opening = await _next(websocket, backlog, idle_s)
        start = SpeechStreamStart()
        if opening.get("type") == "start":
            options = {name: value for name, value in opening.items() if name != "type"}
            start = SpeechStreamStart.model_validate(options)
        voice = services.speech.resolve_voice(start.voice)  # an unusable voice fails at once
        first = opening
        if opening.get("type") == "start":
            first = await _next(websocket, backlog, idle_s)
        speaking = asyncio.create_task(_speak(websocket, services, start, voice, backlog))
        listening = asyncio.create_task(_listen(websocket, first, backlog, idle_s))
        tasks = [speaking, listening]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not speaking.done():
            listening.result()  # it ends only by raising: the client left or sent bad input
        count = speaking.result()
        await websocket.send_json({"type": "done", "sentences": count})
        await websocket.close()
    except WebSocketDisconnect:
        log.info("speech stream: client closed the socket; generation cancelled")
    except (ServiceError, ValidationError) as exc:
        await _fail(websocket, exc)
    except Exception as exc:
        log.error("speech stream failed", exc_info=exc)
        await _fail(websocket, exc)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _fail(websocket: WebSocket, exc: Exception) -> None:
    """The error event, then a close code that says whether to fix the input or retry."""
    if isinstance(exc, ValidationError):
        exc = InvalidInput("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors()))
    if isinstance(exc, ServiceError):
        body = {"error": exc.error, "message": exc.message}
        code = TRY_LATER if exc.status_code in (429, 503) else BAD_INPUT
    else:
        body, code = {"error": "internal_error", "message": "internal server error"}, SERVER_ERROR
    try:
        await websocket.send_json({"type": "error", **body})
        await websocket.close(code)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client is already gone
