"""GET /health: readiness and what the engine runs with (never behind the API key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response

from engine.audio_io import MIN_REFERENCE_SECONDS
from engine.engine import OptimizedFishSpeech
from engine.profile import Provenance
from serving.dependencies import ServicesDep
from serving.schemas import HealthResponse, ServiceLimits, TTSForm, control_ranges
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
        profile_source=shown_path(services.profile_source),
        checkpoint=shown_path(services.model_dir),
        queue_depth=worker.depth,
        limits=limits(services.settings),
    )


def shown_path(path: Path | str) -> str:
    """``path`` as an open route may show it: relative to the working directory when inside it,
    else its last part alone (an absolute path tells anyone the machine's layout)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


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


def describe(engine: OptimizedFishSpeech | None, **fields: object) -> HealthResponse:
    """``/health``: what runs, on what, compiled and quantized how."""
    if engine is None:
        return HealthResponse(**fields)
    profile = engine.active_profile
    return HealthResponse(
        **fields,
        device=engine.hardware.device,
        device_name=engine.hardware.name,
        compute_capability=engine.hardware.capability_str,
        dtype=str(engine.dtype).removeprefix("torch."),
        compiled=profile.compiled,
        compile_decode=profile.compile_decode,
        compile_codec=profile.compile_codec,
        quantization=profile.quantization,
        profile=profile.knobs(),
        provenance=_provenance(profile.provenance),
        fallbacks=[str(f) for f in engine.fallbacks],
        synthetic_checkpoint=engine.checkpoint.is_synthetic,
        warmup_s=engine.compile_seconds,
        max_batch=profile.max_batch,
        objective=profile.provenance.objective if profile.provenance else None,
    )


def _provenance(provenance: Provenance | None) -> dict[str, Any] | None:
    """The profile's provenance, with the folder it was measured on shown as ``shown_path``."""
    if provenance is None:
        return None
    fields = provenance.model_dump()
    if fields["checkpoint_dir"]:
        fields["checkpoint_dir"] = shown_path(fields["checkpoint_dir"])
    return fields
