"""The voice library: list, inspect, add (with ASR when no transcript is sent), delete, and each
voice's pronunciation list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from starlette.concurrency import run_in_threadpool

from serving.dependencies import ServicesDep
from serving.routers.forms import StrictFormRoute
from serving.routers.responses import ERROR_RESPONSES
from serving.schemas import Deleted, PronunciationList, VoiceInfo, VoiceList

router = APIRouter(
    prefix="/voices", tags=["voices"], responses=ERROR_RESPONSES, route_class=StrictFormRoute
)


@router.get("")
async def list_voices(services: ServicesDep) -> VoiceList:
    return VoiceList(voices=services.voices.list())


@router.get("/{voice_id}")
async def get_voice(voice_id: str, services: ServicesDep) -> VoiceInfo:
    return services.voices.get(voice_id).info


@router.post("", status_code=status.HTTP_201_CREATED)
async def add_voice(
    services: ServicesDep,
    voice_id: Annotated[str, Form(description="1-64 of letters, digits, '_', '-', '.'")],
    audio: Annotated[UploadFile, File(description="reference recording")],
    transcript: Annotated[
        str | None, Form(max_length=2000, description="what it says; ASR if empty")
    ] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> VoiceInfo:
    """Save a voice: audio, transcript, its reference codes (computed now) and metadata."""
    return await services.speech.add_voice(voice_id, audio, transcript, name)


@router.delete("/{voice_id}")
async def delete_voice(voice_id: str, services: ServicesDep) -> Deleted:
    await run_in_threadpool(services.voices.delete, voice_id)  # it may wait for the file lock
    return Deleted(id=voice_id)


@router.get("/{voice_id}/pronunciations")
async def get_pronunciations(voice_id: str, services: ServicesDep) -> PronunciationList:
    """The voice's own ``written: spoken`` entries (the global PRONUNCIATIONS list is apart)."""
    return PronunciationList(entries=services.voices.pronunciations(voice_id).entries)


@router.put("/{voice_id}/pronunciations")
async def put_pronunciations(
    voice_id: str, body: PronunciationList, services: ServicesDep
) -> PronunciationList:
    """Replace the voice's list; it applies to the next request that uses the voice."""
    listed = await run_in_threadpool(services.voices.set_pronunciations, voice_id, body.entries)
    return PronunciationList(entries=listed.entries)


@router.delete("/{voice_id}/pronunciations")
async def delete_pronunciations(voice_id: str, services: ServicesDep) -> PronunciationList:
    """Remove the voice's list."""
    await run_in_threadpool(services.voices.set_pronunciations, voice_id, {})
    return PronunciationList(entries={})
