"""Startup: the profile, the pronunciation list, the checkpoint check, and building + warming the
engine.

Cheap checks (profile file, checkpoint folder layout) run before the server accepts connections
so a wrong MODEL_DIR stops it at once with a clear message; loading weights and warming up run on
the worker thread while ``/health`` says ``loading``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import ValidationError

from engine.engine import OptimizedFishSpeech
from engine.errors import ConfigError
from engine.model.checkpoint import CheckpointError, CheckpointFolder
from engine.profile import EngineProfile
from engine.text import Pronunciations, SpokenForm

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start; the message says what to fix."""


def load_profile(path: Path, env: dict[str, str]) -> tuple[EngineProfile, str]:
    """The exported profile (or safe defaults, with one warning) under the engine's overrides in
    ``env`` (MIXED_PRECISION, QUANTIZATION, ENABLE_TORCH_COMPILE, ...)."""
    if path.is_file():
        try:
            profile, source = EngineProfile.load(path), str(path)
        except (ValidationError, ValueError, OSError) as exc:
            raise StartupError(f"profile {path} is invalid: {exc}") from exc
    else:
        log.warning("no profile at %s (PROFILE_PATH); serving with safe engine defaults", path)
        profile, source = EngineProfile(), "defaults"
    try:
        return EngineProfile.from_env(base=profile, env=env), source
    except (ValidationError, ValueError) as exc:
        raise StartupError(f"engine overrides in the environment are invalid: {exc}") from exc


def load_spoken_form(pronunciations: Path | None) -> SpokenForm:
    """Normalisation with the global pronunciation list (PRONUNCIATIONS), checked now."""
    try:
        return SpokenForm(Pronunciations.load(pronunciations) if pronunciations else None)
    except ConfigError as exc:
        raise StartupError(f"{exc} (PRONUNCIATIONS)") from exc


def check_checkpoint(model_dir: Path) -> CheckpointFolder:
    """The checkpoint folder, or a ``StartupError`` naming what is missing."""
    try:
        return CheckpointFolder.open(model_dir)
    except CheckpointError as exc:
        raise StartupError(
            f"{exc}. Set MODEL_DIR to an S1-mini checkpoint folder (config.json, model.pth, "
            "codec.pth, tokenizer.tiktoken, special_tokens.json), or run `make sweep` first (it "
            "makes and measures the tiny synthetic one); the service never generates one."
        ) from exc


def build_engine(model_dir: Path, profile: EngineProfile, warmup: bool) -> OptimizedFishSpeech:
    """Load the weights under ``profile`` and run warm-up (compile, graph capture) once."""
    t0 = time.perf_counter()
    engine = OptimizedFishSpeech.from_checkpoint(model_dir, profile)
    log.info(
        "engine loaded in %.1f s on %s (%s)",
        time.perf_counter() - t0,
        engine.hardware.name,
        engine.dtype,
    )
    if warmup:
        log.info("warm-up took %.1f s", engine.warmup())
    return engine
