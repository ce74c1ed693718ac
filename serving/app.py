"""The FastAPI app: ``uvicorn serving.app:app`` serves the default settings, ``create_app`` others.

Startup checks the profile and the checkpoint folder before accepting connections (a wrong
MODEL_DIR stops the process with a clear message), then loads and warms the engine on its worker
thread while ``/health`` answers ``loading``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serving.dependencies import Services, limit_rate
from serving.errors import install_error_handlers
from serving.guard import RequestGuard, open_paths, proxy_warning
from serving.routers import (
    cache,
    emotions,
    health,
    metrics,
    openai,
    speech_socket,
    text,
    tts,
    voices,
)
from serving.routers.responses import METRIC_HEADERS
from serving.services.asr import Transcriber
from serving.services.checkpoint_choice import choose_checkpoint, warn_if_synthetic
from serving.services.metrics import MetricsStore
from serving.services.ratelimit import RateLimiter
from serving.services.speech import SpeechService
from serving.services.startup import (
    StartupError,
    build_engine,
    check_checkpoint,
    load_profile,
    load_spoken_form,
)
from serving.services.voices import VoiceLibrary
from serving.services.worker import EngineWorker
from serving.settings import Settings

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("fishbench")
    except PackageNotFoundError:
        return "0+unknown"


def build_services(settings: Settings) -> Services:
    """Check the profile and checkpoint, then wire the services; the engine loads later."""
    profile, source = load_profile(settings.profile_path, settings.engine_env())
    model_dir, reason = choose_checkpoint(settings.model_dir, profile)
    check_checkpoint(model_dir)
    log.info("checkpoint %s (%s)", model_dir, reason)
    synthetic = warn_if_synthetic(model_dir)
    worker = EngineWorker(
        lambda: build_engine(model_dir, profile, settings.warmup),
        settings.queue_size,
        # as many jobs at once as the engine decodes together (it may lower what was asked)
        concurrency=lambda engine: engine.active_profile.max_batch,
    )
    library = VoiceLibrary(settings.voices_dir)
    store = MetricsStore()
    speech = SpeechService(
        settings,
        worker,
        library,
        store,
        Transcriber(),
        load_spoken_form(settings.pronunciations),
        synthetic,
    )
    limiter = RateLimiter(settings.rate_limit_per_minute)
    return Services(settings, worker, library, store, limiter, speech, source, model_dir)


def _configure_logging(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def _warn_about_exposure(settings: Settings) -> None:
    """Settings that let others act as this server's clients: said once at start."""
    if "*" in settings.cors_origins and not settings.api_keys:
        log.warning(
            "CORS_ORIGINS=* without API_KEY: every web page a browser on this machine opens may "
            "use the service and its voice library; list the UI origins instead, or set API_KEY"
        )
    if warning := proxy_warning(settings):
        log.warning(warning)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (default: environment / .env)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_logging(settings.log_level)
        _warn_about_exposure(settings)
        try:
            services = build_services(settings)
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            raise
        app.state.services = services
        services.worker.start()
        if settings.normalize:  # the grammar loads beside the engine, not in a first request
            threading.Thread(
                target=services.speech.spoken_form.preload, name="grammar-load", daemon=True
            ).start()
        log.info(
            "loading the engine from %s (profile: %s)", services.model_dir, services.profile_source
        )
        yield
        services.worker.stop()
        if services.worker.engine is not None:
            services.worker.engine.close()  # the batch scheduler's thread, when it has one

    app = FastAPI(
        title="fishbench",
        version=_version(),
        description="OpenAudio S1-mini voice cloning under the profile measured for this GPU.",
        lifespan=lifespan,
    )
    # The guard sits inside CORS, so preflights from CORS_ORIGINS pass and its 401 / 413 / 429
    # carry CORS headers; without CORS_ORIGINS no page of another origin is allowed anything.
    app.add_middleware(RequestGuard, settings=settings, open_paths=open_paths(app, settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=list(METRIC_HEADERS),
        )
    install_error_handlers(app)
    app.include_router(health.router)
    guarded = [Depends(limit_rate)]
    for module in (tts, openai, text, voices, metrics, cache, emotions):
        app.include_router(module.router, dependencies=guarded)
    app.include_router(speech_socket.router)  # the guard checks its key; it limits its own rate
    return app


app = create_app()
