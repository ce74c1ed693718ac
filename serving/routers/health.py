"""GET /health: readiness and what the engine runs with (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from engine.audio_io import MIN_REFERENCE_SECONDS
from serving.dependencies import ServicesDep
from serving.schemas import HealthResponse, ServiceLimits, TTSForm, control_ranges
from serving.services.loading import describe
from serving.settings import Settings

router = APIRouter(tags=["health"])
CONTROLS = control_ranges(TTSForm, ("temperature", "top_p", "speed"))


@router.get(
    "/health", responses={503: {"model": HealthResponse, "description": "loading or failed"}}
)
async def health(response: Response, services: ServicesDep) -> HealthResponse:
    """200 once warmed up; 503 while loading or after a failed load, with the same body."""
    worker = services.worker
    if worker.state != "ready":
        response.status_code = 503
    return describe(
        worker.engine,
        status=worker.state,
        message=worker.error,
        profile_source=services.profile_source,
        checkpoint=str(services.model_dir),
        queue_depth=worker.depth,
        limits=limits(services.settings),
    )


def limits(settings: Settings) -> ServiceLimits:
    """What a request may carry; the same values the routes enforce."""
    return ServiceLimits(
        max_reference_seconds=settings.max_reference_seconds,
        min_reference_seconds=MIN_REFERENCE_SECONDS,
        max_upload_mb=settings.max_upload_mb,
        max_body_mb=settings.max_body_mb,
        max_text_chars=settings.max_text_chars,
        controls=CONTROLS,
    )
