"""POST /cache/clear: drop cached reference codes and semantic tokens."""

from __future__ import annotations

from fastapi import APIRouter

from serving.dependencies import ServicesDep
from serving.schemas import CacheCleared

router = APIRouter(tags=["cache"])


@router.post("/cache/clear")
async def clear_cache(services: ServicesDep) -> CacheCleared:
    """Saved voices keep their codes on disk; only the in-memory caches are emptied."""
    return CacheCleared(cleared=services.clear_caches())
