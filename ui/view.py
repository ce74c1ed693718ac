"""What both UIs show, as plain strings: the profile line, the metrics bar, unavailable features.

Everything here reads the service's answers defensively: a field that is missing shows as
unknown instead of breaking the page.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ui.client import Figures


def words_html(words: list[dict[str, Any]], alignment: str) -> str:
    """The word timings under the player, or why there are none ("" when none were asked)."""
    if not alignment:
        return ""
    if not words:
        return f'<p class="fb-words-none">No word timings: {html.escape(alignment)}</p>'
    rows = "".join(
        f"<tr><td>{html.escape(str(w['word']))}</td><td>{float(w['start']):.2f}</td>"
        f"<td>{float(w['end']):.2f}</td></tr>"
        for w in words
    )
    head = "<tr><th>word</th><th>start s</th><th>end s</th></tr>"
    return f'<table class="fb-words">{head}{rows}</table>'


ASSETS_DIR = Path(__file__).resolve().parent.parent / "public" / "assets"
CSS_PATH = ASSETS_DIR / "fishbench.css"
FAVICON_PATH = ASSETS_DIR / "favicon.png"

LANGUAGES: list[tuple[str, str]] = [
    ("Auto-detect", ""),
    ("English", "en"),
    ("Chinese", "zh"),
    ("Japanese", "ja"),
    ("Korean", "ko"),
    ("French", "fr"),
    ("German", "de"),
    ("Spanish", "es"),
    ("Portuguese", "pt"),
    ("Italian", "it"),
    ("Russian", "ru"),
    ("Dutch", "nl"),
    ("Polish", "pl"),
    ("Arabic", "ar"),
]
FOUR_BIT = re.compile(r"\b(nf4|int4)\b")
UNAVAILABLE = "n/a"


def mark_experimental(text: str) -> str:
    """``text`` with every 4-bit mode (nf4, int4) labelled experimental."""
    return FOUR_BIT.sub(r"\1 (experimental)", text)


def profile_line(health: Mapping[str, Any]) -> str:
    """One line saying what the service runs: device, dtype, compile, quantization, streams,
    requests decoded together."""
    status = health.get("status", "ready")
    if status != "ready":
        return f"Service {status}: {health.get('message') or 'the model is not ready yet'}."
    device = _knob(health, "device_name") or _knob(health, "device") or "unknown device"
    parts = [
        f"{_profile_origin(health)}: {device}",
        _knob(health, "dtype") or _knob(health, "precision"),
        _compile_text(_knob(health, "compile_decode"), _knob(health, "compile_codec")),
        mark_experimental(f"quantization {_knob(health, 'quantization') or 'none'}"),
        f"{_knob(health, 'num_streams') or 1} CUDA stream(s)" if _on_gpu(health) else None,
        f"chunk {_knob(health, 'chunk_size')} frames" if _knob(health, "chunk_size") else None,
        f"max batch {_knob(health, 'max_batch')}" if _knob(health, "max_batch") else None,
    ]
    return " · ".join(str(part) for part in parts if part)


def unavailable_features(health: Mapping[str, Any]) -> list[str]:
    """Features this service cannot offer, each with the reason, plus the profile's fallbacks."""
    notes = []
    if health and not _on_gpu(health):
        reason = "the service runs on the CPU"
        notes += [
            f"GPU utilization: unavailable ({reason})",
            f"Peak VRAM: unavailable ({reason})",
            "CUDA streams: unavailable (they need a CUDA device)",
        ]
    fallbacks = health.get("fallbacks") or []
    notes += [f"Profile fallback: {mark_experimental(str(note))}" for note in fallbacks]
    return notes


def metric_cells(figures: Figures, health: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for the metrics bar; GPU figures say why they are missing."""
    gpu_missing = "n/a (CPU)" if health and not _on_gpu(health) else UNAVAILABLE
    return [
        ("Latency", _format(figures.latency_ms, "ms")),
        ("First audio", _format(figures.ttfa_ms, "ms")),
        ("Peak VRAM", _format(figures.peak_vram_mb, "MB", missing=gpu_missing)),
        ("GPU", _format(figures.gpu_util_pct, "%", missing=gpu_missing)),
    ]


def metrics_html(cells: list[tuple[str, str]]) -> str:
    """The compact metrics bar as HTML (styled by ``fishbench.css``)."""
    items = "".join(
        f'<span class="fb-metric"><span class="fb-metric-label">{html.escape(label)}</span>'
        f'<span class="fb-metric-value">{html.escape(value)}</span></span>'
        for label, value in cells
    )
    return f'<div class="fb-metrics">{items}</div>'


SYNTHETIC_WARNING = (
    "Synthetic weights: the service runs a generated checkpoint ({checkpoint}), so speed is "
    "real but the audio is noise. Put the released S1-mini folder in "
    "checkpoints/openaudio-s1-mini (or set MODEL_DIR) for real speech."
)


def synthetic_warning(health: Mapping[str, Any]) -> str | None:
    """The banner text when the service serves synthetic weights, else None."""
    if not health.get("synthetic_checkpoint"):
        return None
    return SYNTHETIC_WARNING.format(checkpoint=health.get("checkpoint") or "unknown folder")


def banner_html(text: str | None) -> str:
    """A visible warning strip (empty when there is nothing to warn about)."""
    return f'<div class="fb-banner" role="alert">{html.escape(text)}</div>' if text else ""


def notes_html(notes: list[str]) -> str:
    """The unavailable-feature notes as a small muted list."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<ul class="fb-notes">{items}</ul>'


def voice_choices(voices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(label, id)`` pairs for a voice picker, labelled by name where a voice has one."""
    choices = []
    for voice in voices:
        voice_id = str(voice.get("id") or voice.get("voice_id") or "")
        if voice_id:
            choices.append((str(voice.get("name") or voice_id), voice_id))
    return choices


def voice_id_for(name: str, fallback: str = "") -> str:
    """A library id (letters, digits, ``_-.``, at most 64) made from a voice's name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip() or fallback).strip("-.").lower()
    return slug[:64] or f"voice-{int(time.time())}"


SLIDER_STEP = 0.05
SLIDERS = {"temperature": "Temperature", "top_p": "Top-p", "speed": "Speed"}


def slider_range(health: Mapping[str, Any], name: str) -> tuple[float, float, float] | None:
    """``(minimum, maximum, default)`` of request field ``name`` as the service validates it (from
    ``/health``'s ``limits.controls``), or None while the service has not answered."""
    control = health.get("limits", {}).get("controls", {}).get(name)
    if control is None:
        return None
    low = control["minimum"] + (SLIDER_STEP if control["exclusive_minimum"] else 0.0)
    return low, control["maximum"], control["default"]


def insert_marker(text: str, marker: str | None) -> str:
    """``text`` with an emotion marker such as ``(excited)`` appended, space-separated."""
    if not marker:
        return text
    stripped = text.rstrip()
    return f"{stripped} {marker} " if stripped else f"{marker} "


def _knob(health: Mapping[str, Any], key: str) -> Any:
    """A setting from the top level of ``/health``, else from its ``profile``."""
    profile = health.get("profile")
    if health.get(key) is not None:
        return health[key]
    return profile.get(key) if isinstance(profile, Mapping) else None


def _profile_origin(health: Mapping[str, Any]) -> str:
    """``Profile``, with where it came from, the GPU it was tuned on and what for, when known."""
    provenance = health.get("provenance")
    tuned_on = provenance.get("gpu_name") if isinstance(provenance, Mapping) else None
    details = [str(health["profile_source"])] if health.get("profile_source") else []
    details += [f"tuned on {tuned_on}"] if tuned_on else []
    details += [f"for {health['objective']}"] if health.get("objective") else []
    return f"Profile ({', '.join(details)})" if details else "Profile"


def _on_gpu(health: Mapping[str, Any]) -> bool:
    return str(_knob(health, "device") or "").startswith("cuda")


def _compile_text(decode: str | None, codec: str | None) -> str | None:
    if decode is None and codec is None:
        return None
    if decode in (None, "none") and codec in (None, "none"):
        return "eager"
    return f"compile decode={decode or 'none'}, codec={codec or 'none'}"


def _format(value: float | None, unit: str, missing: str = UNAVAILABLE) -> str:
    if value is None:
        return missing
    if unit == "ms" and value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} {unit}" if unit != "%" else f"{value:.0f}%"
