"""POST /tts: the project's own multipart endpoint (reference upload or saved voice)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from serving.dependencies import ServicesDep
from serving.errors import InvalidInput
from serving.routers.forms import StrictFormRoute
from serving.routers.responses import (
    AUDIO_RESPONSES,
    CLIENT_CLOSED,
    audio_response,
    captioned_file,
    metric_headers,
    unless_disconnected,
    words_header,
)
from serving.schemas import TTSForm
from serving.services.audio import MEDIA_TYPES

router = APIRouter(tags=["speech"], route_class=StrictFormRoute)


@router.post("/tts", response_class=Response, responses=AUDIO_RESPONSES)
async def tts(
    request: Request,
    form: Annotated[TTSForm, Form()],
    services: ServicesDep,
    speaker_file: Annotated[UploadFile | None, File(description="reference recording")] = None,
) -> Response:
    """Clone the voice of ``speaker_file`` (or ``voice_id``) speaking ``text``."""
    speech = services.speech
    if form.timestamps and form.stream:
        raise InvalidInput("timestamps need the whole audio: send stream=false")
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
    if not form.timestamps:
        return await audio_response(request, stream, form.format, streaming=form.stream)
    captioned = await captioned_file(request, stream, form.format, speech)
    if captioned is None:
        return Response(status_code=CLIENT_CLOSED)
    body, _, words, alignment = captioned
    headers = metric_headers(stream.stats) | {
        "x-words": words_header(words),
        "x-alignment": alignment,
    }
    return Response(body, media_type=MEDIA_TYPES[form.format], headers=headers)
