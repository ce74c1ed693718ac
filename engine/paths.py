"""Where the project's own files live, so every layer names them the same way."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The Hydra config tree (``conf/``): sweep presets, hardware presets, the tiny codec config."""

REPORTS_DIR = Path("reports")
"""Sweep output, relative to the working directory (``make`` runs from the project root)."""

ACTIVE_PROFILE = REPORTS_DIR / "profile.yaml"
"""The profile a sweep exports and the service loads unless ``PROFILE_PATH`` says otherwise."""
