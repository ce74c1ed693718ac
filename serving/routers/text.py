"""POST /normalize: the spoken form a speech request would send to the engine, without speaking."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.dependencies import ServicesDep
from serving.routers.responses import CLIENT_CLOSED, ERROR_RESPONSES, unless_disconnected
from serving.schemas import NormalizedText, NormalizeRequest

router = APIRouter(tags=["text"], responses=ERROR_RESPONSES)


@router.post("/normalize", response_model=NormalizedText)
async def normalize(
    request: Request, body: NormalizeRequest, services: ServicesDep
) -> NormalizedText | Response:
    """Numbers, money, dates, units as words, then the global and the voice's pronunciations;
    the work stops when the client leaves."""
    speech = services.speech
    voice = speech.resolve_voice(body.voice_id)
    normalized = speech.normalizes(body.normalize)
    text = await unless_disconnected(request, speech.spoken(body.text, normalized, voice))
    if text is None:
        return Response(status_code=CLIENT_CLOSED)
    return NormalizedText(text=text, normalized=normalized)
