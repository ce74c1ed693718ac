"""Rolling metrics as JSON, and the Prometheus exposition of the same service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.dependencies import ServicesDep
from serving.schemas import MetricsResponse

router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("")
async def metrics(services: ServicesDep) -> MetricsResponse:
    """p50/p95 latency, time to first audio, RTF, queue wait and frames/s; batch occupancy, peak
    VRAM, GPU %, queue, cache hit rates."""
    return services.snapshot()


@router.get("/prometheus", response_class=Response)
async def prometheus(request: Request, services: ServicesDep) -> Response:
    """Histograms by route, request counters by route and outcome, queue and cache gauges."""
    body, content_type = services.metrics.exposition(
        services.snapshot(), request.headers.get("accept", "")
    )
    return Response(body, media_type=content_type)
