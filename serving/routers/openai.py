"""OpenAI-compatible routes, so the official client and Open WebUI work unchanged."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response

from serving.dependencies import Services, ServicesDep
from serving.routers.responses import (
    AUDIO_RESPONSES,
    CLIENT_CLOSED,
    audio_response,
    captioned_file,
    sse_response,
    unless_disconnected,
)
from serving.schemas import (
    CaptionedSpeech,
    ModelCard,
    ModelList,
    OpenAIVoiceList,
    SpeechRequest,
    VoiceName,
    VoiceRef,
    WordTiming,
)
from serving.services.synthesis import SynthesisStream

router = APIRouter(prefix="/v1", tags=["openai"])

MODEL_IDS = ("s1-mini", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_CREATED = int(time.time())


def _speak(
    body: SpeechRequest, services: Services, *, streaming: bool
) -> Coroutine[Any, Any, SynthesisStream]:
    """``body`` as a speech request on the queue (the audio and the captioned routes share it)."""
    voice_id = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    return services.speech.speak(
        body.input,
        voice=services.speech.resolve_voice(voice_id),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        speed=body.speed,
        normalize=body.normalize,
        chunked_decode=streaming,
        route="openai",
    )


@router.post("/audio/speech", response_class=Response, responses=AUDIO_RESPONSES)
async def create_speech(request: Request, body: SpeechRequest, services: ServicesDep) -> Response:
    """Stream speech in ``response_format``; ``stream_format=sse`` sends base64 delta events."""
    stream = await unless_disconnected(request, _speak(body, services, streaming=True))
    if stream is None:
        return Response(status_code=CLIENT_CLOSED)
    if body.stream_format == "sse":
        return sse_response(stream, body.response_format)
    return await audio_response(request, stream, body.response_format, streaming=True)


@router.get("/models")
async def list_models() -> ModelList:
    """One engine serves every listed id; OpenAI's names are aliases for stock clients."""
    return ModelList(data=[ModelCard(id=model_id, created=_CREATED) for model_id in MODEL_IDS])


@router.get("/audio/voices")
async def list_voices(services: ServicesDep) -> OpenAIVoiceList:
    """``default`` (no reference) plus every saved voice."""
    saved = [VoiceName(id=v.id, name=v.name) for v in services.voices.list()]
    return OpenAIVoiceList(voices=[VoiceName(id="default", name="default (unconditioned)"), *saved])


@router.post("/audio/speech/captioned", response_model=CaptionedSpeech)
async def create_captioned_speech(
    request: Request, body: SpeechRequest, services: ServicesDep
) -> CaptionedSpeech | Response:
    """The whole audio (base64, in ``response_format``) and when each word is spoken in it."""
    stream = await unless_disconnected(request, _speak(body, services, streaming=False))
    if stream is None:
        return Response(status_code=CLIENT_CLOSED)
    captioned = await captioned_file(request, stream, body.response_format, services.speech)
    if captioned is None:
        return Response(status_code=CLIENT_CLOSED)
    audio_bytes, audio, words, alignment = captioned
    return CaptionedSpeech(
        audio=base64.b64encode(audio_bytes).decode(),
        format=body.response_format,
        sample_rate=stream.stats.sample_rate,
        duration_s=round(len(audio) / stream.stats.sample_rate, 3),
        text=stream.text,
        words=[WordTiming(**dataclasses.asdict(word)) for word in words],
        alignment=alignment,
    )
