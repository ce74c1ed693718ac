"""POST /normalize: the spoken form a speech request would send to the engine, without speaking."""

from __future__ import annotations

from fastapi import APIRouter

from serving.dependencies import ServicesDep
from serving.routers.responses import ERROR_RESPONSES
from serving.schemas import NormalizedText, NormalizeRequest

router = APIRouter(tags=["text"], responses=ERROR_RESPONSES)


@router.post("/normalize")
async def normalize(body: NormalizeRequest, services: ServicesDep) -> NormalizedText:
    """Numbers, money, dates, units as words, then the global and the voice's pronunciations."""
    speech = services.speech
    voice = speech.resolve_voice(body.voice_id)
    normalized = speech.normalizes(body.normalize)
    return NormalizedText(
        text=await speech.spoken(body.text, normalized, voice), normalized=normalized
    )
