"""Rolling metrics as JSON and as Prometheus text."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from serving.dependencies import ServicesDep
from serving.schemas import MetricsResponse
from serving.services.metrics import prometheus_text

router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("")
async def metrics(services: ServicesDep) -> MetricsResponse:
    """p50/p95 latency, time to first audio and RTF, peak VRAM, GPU %, queue, cache hit rates."""
    return services.snapshot()


@router.get("/prometheus", response_class=PlainTextResponse)
async def prometheus(services: ServicesDep) -> PlainTextResponse:
    return PlainTextResponse(
        prometheus_text(services.snapshot()), media_type="text/plain; version=0.0.4"
    )
