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
1011 for a server error. Each sentence waits in the same queue as HTTP requests; closing the
socket cancels the sentence being generated. The API key is checked, as for HTTP, from the
``Authorization`` header before the handshake (a refused handshake is HTTP 403).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from engine.audio_io import SAMPLE_RATE
from engine.errors import RequestError
from engine.spoken_form import SENTENCE_END
from serving.dependencies import Services, count_against_limit
from serving.errors import InvalidInput, ServiceError
from serving.schemas import SEED_MAX, SpeechStreamStart
from serving.services.audio import make_encoder

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

ROUTE = "stream"  # its label in /metrics (serving.services.metrics.ROUTES)
BAD_INPUT, SERVER_ERROR, TRY_LATER = 1008, 1011, 1013


async def _read(websocket: WebSocket) -> dict:
    try:
        message = json.loads(await websocket.receive_text())
    except (json.JSONDecodeError, KeyError) as exc:
        raise InvalidInput("every message is JSON text: start, text or end") from exc
    if not isinstance(message, dict):
        raise InvalidInput("every message is a JSON object with a type")
    return message


async def _receive(websocket: WebSocket, first: dict, sentences: asyncio.Queue[str | None]) -> None:
    """Cut the text deltas into sentences; None once the client sent ``end``."""
    buffer, message = "", first
    while True:
        kind = message.get("type")
        if kind == "text":
            buffer += str(message.get("text", ""))
            *complete, buffer = SENTENCE_END.split(buffer)
            for sentence in complete:
                if sentence.strip():
                    await sentences.put(sentence.strip())
        elif kind == "end":
            if buffer.strip():
                await sentences.put(buffer.strip())
            await sentences.put(None)
            return
        else:
            raise InvalidInput(f"unknown message type {kind!r}: send start, text or end")
        message = await _read(websocket)


async def _speak(
    websocket: WebSocket,
    services: Services,
    start: SpeechStreamStart,
    sentences: asyncio.Queue[str | None],
) -> int:
    """Synthesise each sentence in order and send its audio; the number of sentences."""
    speech = services.speech
    voice = speech.resolve_voice(start.voice)
    seed = secrets.randbelow(SEED_MAX) if start.seed is None else start.seed
    index = 0
    while (sentence := await sentences.get()) is not None:
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
        index += 1
    return index


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(websocket: WebSocket) -> None:
    """Text deltas in, sentence audio out, in order; see the module docstring for the protocol."""
    services: Services = websocket.app.state.services
    await websocket.accept()
    tasks: list[asyncio.Task] = []
    try:
        count_against_limit(websocket, services)
        first = await _read(websocket)
        start = SpeechStreamStart()
        if first.get("type") == "start":
            options = {name: value for name, value in first.items() if name != "type"}
            start = SpeechStreamStart.model_validate(options)
            first = await _read(websocket)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        tasks = [
            asyncio.create_task(_speak(websocket, services, start, sentences)),
            asyncio.create_task(_receive(websocket, first, sentences)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()
        count = await tasks[0]
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
