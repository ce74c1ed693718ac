"""The per-app service container and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from engine.engine import OptimizedFishSpeech
from serving.errors import NotReady
from serving.guard import bearer_token
from serving.schemas import MetricsResponse
from serving.services.metrics import MetricsStore
from serving.services.ratelimit import RateLimiter
from serving.services.speech import SpeechService
from serving.services.voices import VoiceLibrary
from serving.services.worker import EngineWorker
from serving.settings import Settings


@dataclass
class Services:
    """Everything a route may use; built once per app in the lifespan."""

    settings: Settings
    worker: EngineWorker[OptimizedFishSpeech]
    voices: VoiceLibrary
    metrics: MetricsStore
    limiter: RateLimiter
    speech: SpeechService
    profile_source: str
    model_dir: Path

    def snapshot(self) -> MetricsResponse:
        """The rolling metrics plus the engine caches' hit rates."""
        engine = self.worker.engine
        caches = (
            {}
            if engine is None
            else {
                "reference": engine.reference_cache.stats(),
                "semantic": engine.semantic_cache.stats(),
                "voice_prefix": engine.decoder.prefix_cache.stats(),
            }
        )
        frames = None if engine is None else engine.frames_generated
        return self.metrics.snapshot(self.worker.depth, self.worker.queue_size, caches, frames)

    def clear_caches(self) -> dict[str, int]:
        """Empty the engine's in-memory caches (they are locked, so no worker round trip)."""
        engine = self.worker.engine
        if engine is None:
            raise NotReady("the model is still loading; retry shortly", retry_after_s=5)
        caches = {
            "reference": engine.reference_cache,
            "semantic": engine.semantic_cache,
            "voice_prefix": engine.decoder.prefix_cache,
        }
        cleared = {name: len(cache) for name, cache in caches.items()}
        for cache in caches.values():
            cache.clear()
        return cleared


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="API_KEY, when the server sets one")


def limit_rate(
    request: Request,
    services: ServicesDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Count the request against its key's rate limit (per client address when keys are off).

    The key itself was checked by ``serving.guard.RequestGuard`` before the body was read, with
    the same token parser; the bearer dependency documents the scheme in the OpenAPI schema.
    """
    count_against_limit(request, services)


def count_against_limit(connection: HTTPConnection, services: Services) -> None:
    """One request (or WebSocket) against the rate limit of its API key, or of its client
    address when the server has no keys."""
    if services.settings.api_keys:
        key = bearer_token(connection.headers.get("authorization"))
    else:
        key = connection.client.host if connection.client else "unknown"
    services.limiter.check(key)
