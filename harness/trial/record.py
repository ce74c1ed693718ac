"""What a sweep knows about one trial, saved as JSON in its folder (resume reads it back)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAILED, SKIPPED = "OK", "FAILED", "SKIPPED"
BASELINE, CANDIDATE = "baseline", "candidate"
# A screened sweep's stages: a short timing of every candidate, then the full trial of the best.
SCREEN, CONFIRM = "screen", "confirm"


def memory_figure(metrics: Mapping[str, float | None]) -> float | None:
    """The memory a trial is judged by: peak reserved VRAM; host RSS where there is no VRAM
    (CPU). Used for records and for MLflow runs alike."""
    vram = metrics.get("peak_reserved_mb")
    return vram if vram is not None else metrics.get("host_rss_mb")


@dataclass
class TrialRecord:
    """One trial's identity, outcome and figures. ``reason`` holds the error text or skip reason."""

    name: str
    kind: str
    config_hash: str
    knobs: dict[str, Any]
    status: str = FAILED
    reason: str | None = None
    active_knobs: dict[str, Any] | None = None
    fallbacks: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)
    fidelity: dict[str, float] | None = None
    wer: float | None = None
    transcript: str | None = None
    notes: dict[str, str] = field(
        default_factory=dict
    )  # why a figure is absent: fidelity, wer, vram
    runs: list[dict[str, Any]] = field(default_factory=list)  # raw per-repeat reports
    isolation: dict[str, Any] = field(default_factory=dict)  # what else ran meanwhile
    noisy: str | None = None  # why other processes disturbed the timings, when they did
    run_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    stage: str | None = None  # SCREEN or CONFIRM in a screened sweep, else None

    @property
    def screened(self) -> bool:
        """A screening record: a short timing that ranks candidates and never wins."""
        return self.stage == SCREEN

    @property
    def wall_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def is_baseline(self) -> bool:
        return self.kind == BASELINE

    @property
    def ok(self) -> bool:
        return self.status == OK

    def metric(self, key: str) -> float | None:
        return self.metrics.get(key)

    @property
    def headline(self) -> str:
        """The one-line reason (the first line of ``reason``)."""
        lines = (self.reason or "").strip().splitlines()
        return lines[0] if lines else "no reason recorded"

    @property
    def memory_mb(self) -> float | None:
        return memory_figure(self.metrics)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> TrialRecord:
        return cls(**json.loads(path.read_text()))
