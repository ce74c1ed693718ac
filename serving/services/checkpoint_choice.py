"""Which checkpoint folder the service loads when MODEL_DIR is not set.

A newcomer runs ``make sweep`` (which makes and measures the tiny synthetic checkpoint when the
released weights are absent) and then ``make serve``: the service should serve what the sweep
measured rather than stop on a missing folder. An explicit MODEL_DIR always wins.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.model.checkpoint import SYNTHETIC_MARKER
from engine.profile import EngineProfile

log = logging.getLogger(__name__)

RELEASED_DIR = Path("checkpoints/openaudio-s1-mini")
TINY_SYNTHETIC_DIR = Path("checkpoints/tiny-synthetic")


def choose_checkpoint(model_dir: Path | None, profile: EngineProfile) -> tuple[Path, str]:
    """The folder to load and why: MODEL_DIR, else the released folder, else the folder the
    active profile was measured on, else the tiny synthetic one. With nothing there, the
    released path (so the start-up check names it and says what to do)."""
    if model_dir is not None:
        return model_dir, "MODEL_DIR"
    measured = profile.provenance.checkpoint_dir if profile.provenance else None
    candidates = [
        (RELEASED_DIR, "the released checkpoint folder"),
        (Path(measured) if measured else None, "the folder the profile was measured on"),
        (TINY_SYNTHETIC_DIR, "the tiny synthetic checkpoint (MODEL_DIR unset, no weights)"),
    ]
    for folder, reason in candidates:
        if folder is not None and folder.is_dir():
            return folder, reason
    return RELEASED_DIR, "the released checkpoint folder (missing)"


def warn_if_synthetic(folder: Path) -> bool:
    """One WARNING when the weights are synthetic: the service works but speaks noise."""
    synthetic = (folder / SYNTHETIC_MARKER).is_file()
    if synthetic:
        log.warning(
            "serving SYNTHETIC weights from %s: speed is real, the audio is noise. Put the "
            "released S1-mini folder in %s or set MODEL_DIR for real speech",
            folder,
            RELEASED_DIR,
        )
    return synthetic
