"""POST /tts: the project's own multipart endpoint (reference upload or saved voice)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from serving.dependencies import ServicesDep
from serving.routers.responses import (
    AUDIO_RESPONSES,
    CLIENT_CLOSED,
    audio_response,
    unless_disconnected,
)
from serving.schemas import TTSForm

router = APIRouter(tags=["speech"])


@router.post("/tts", response_class=Response, responses=AUDIO_RESPONSES)
async def tts(
    request: Request,
    form: Annotated[TTSForm, Form()],
    services: ServicesDep,
    speaker_file: Annotated[UploadFile | None, File(description="reference recording")] = None,
) -> Response:
    """Clone the voice of ``speaker_file`` (or ``voice_id``) speaking ``text``."""
    speech = services.speech
    reference = await speech.read_reference(speaker_file)
    speaking = speech.speak(
        form.text,
        voice=speech.resolve_voice(form.voice_id),
        reference=reference,
        reference_text=form.reference_text,
        temperature=form.temperature,
        top_p=form.top_p,
        seed=form.seed,
        speed=form.speed,
        normalize=form.normalize,
        chunked_decode=form.stream,
        low_memory=form.optimize_for_memory,
    )
    stream = await unless_disconnected(request, speaking)
    if stream is None:
        return Response(status_code=CLIENT_CLOSED)
    return await audio_response(request, stream, form.format, streaming=form.stream)
