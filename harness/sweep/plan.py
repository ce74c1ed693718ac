"""Which trial runs next, and whether the time budget still allows it.

A sweep asks a plan for trials one at a time and tells it each result, so the grid and Optuna's
search (``harness.sweep.search``) share one loop, one progress bar and one budget. The grid runs
the baseline first, then candidates by expected value: those earlier sweeps on this hardware
preset found faster than their baseline (fastest first), then untried ones in the preset's order
(presets list the most promising first), then those found no faster.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from harness.sweep.grid import TrialSpec
from harness.sweep.store import RECORD, STATE
from harness.trial.record import TrialRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PastTrial:
    """What earlier sweeps on this hardware preset measured for one trial name."""

    speedup: float | None  # median over sweeps of baseline p50 / trial p50; None if never
    # measured undisturbed (FAILED, SKIPPED or NOISY every time)
    wall_s: float  # median wall time of the whole trial (load, compile, repeats, fidelity)


def _sweep_hardware(folder: Path) -> str | None:
    try:
        return yaml.safe_load((folder / "config.yaml").read_text())["hardware"]["name"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _records(folder: Path) -> list[TrialRecord]:
    records = []
    for path in folder.glob(f"trials/*/{RECORD}"):
        try:
            records.append(TrialRecord.load(path))
        except (OSError, ValueError, TypeError) as exc:
            log.info("history: ignoring %s (%s)", path, exc)
    return records


def _past_sweeps(
    reports_dir: str | Path, hardware: str, exclude: str
) -> Iterator[list[TrialRecord]]:
    """Each earlier sweep's (not ``exclude``) trial records on the hardware preset."""
    for state in sorted(Path(reports_dir, "sweeps").glob(f"*/{STATE}")):
        folder = state.parent
        if folder.name != exclude and _sweep_hardware(folder) == hardware:
            yield _records(folder)


def past_records(reports_dir: str | Path, hardware: str, exclude: str) -> list[TrialRecord]:
    """Every trial record of earlier sweeps (not ``exclude``) on the hardware preset."""
    return [r for records in _past_sweeps(reports_dir, hardware, exclude) for r in records]


def load_history(reports_dir: str | Path, hardware: str, exclude: str) -> dict[str, PastTrial]:
    """Per trial name, what earlier sweeps (not ``exclude``) on ``hardware`` measured."""
    speedups: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    for records in _past_sweeps(reports_dir, hardware, exclude):
        base = next((r.metric("latency_p50_s") for r in records if r.is_baseline and r.ok), None)
        for r in records:
            if r.started_at and r.ended_at:
                walls.setdefault(r.name, []).append(r.ended_at - r.started_at)
            speedups.setdefault(r.name, [])
            mine = r.metric("latency_p50_s") if r.ok and not r.noisy and not r.screened else None
            if base and mine:
                speedups[r.name].append(base / mine)
    return {
        name: PastTrial(
            statistics.median(speedups[name]) if speedups[name] else None,
            statistics.median(walls.get(name) or [0.0]),
        )
        for name in speedups
    }


def order_by_promise(specs: Sequence[TrialSpec], history: dict[str, PastTrial]) -> list[TrialSpec]:
    """Baseline first, then candidates by past speed-up (see the module docstring)."""

    def rank(item: tuple[int, TrialSpec]) -> tuple[int, float, int]:
        index, spec = item
        past = history.get(spec.name)
        if spec.is_baseline:
            return (0, 0.0, index)
        if past is None:
            return (2, 0.0, index)
        if past.speedup is not None and past.speedup > 1.0:
            return (1, -past.speedup, index)
        return (3, -(past.speedup or 0.0), index)

    return [spec for _, spec in sorted(enumerate(specs), key=rank)]


class Plan(Protocol):
    """Hands out trials one at a time and learns each one's result."""

    total: int

    def next_spec(self) -> TrialSpec | None: ...

    def done(self, record: TrialRecord) -> None: ...

    def remaining(self) -> list[str]: ...

    def upcoming(self) -> list[TrialSpec]:
        """The specs still expected to run, in order (stand-ins where not yet known)."""
        ...

    def drop(self, spec: TrialSpec) -> list[str]:
        """``spec`` does not fit the budget: the names this plan gives up (it may go on with
        others, such as a screened plan's confirmations)."""
        ...

    def essential(self, spec: TrialSpec) -> bool:
        """Whether ``spec`` runs whatever the budget (beyond the baseline and first candidate)."""
        return False

    def reserve(self) -> list[TrialSpec]:
        """Specs the budget must keep time for before handing out ``next_spec``'s like."""
        return []

    @property
    def asked_count(self) -> int: ...


class GridPlan(Plan):
    """Every spec once, in the order given."""

    def __init__(self, specs: Sequence[TrialSpec]) -> None:
        self.queue = list(specs)
        self.total = len(self.queue)

    def next_spec(self) -> TrialSpec | None:
        return self.queue.pop(0) if self.queue else None

    def done(self, record: TrialRecord) -> None:
        """The grid does not adapt to results."""

    def remaining(self) -> list[str]:
        return [spec.name for spec in self.queue]

    def upcoming(self) -> list[TrialSpec]:
        return list(self.queue)

    def drop(self, spec: TrialSpec) -> list[str]:
        dropped = [spec.name, *self.remaining()]
        self.queue.clear()
        return dropped

    @property
    def asked_count(self) -> int:
        """Candidates handed out so far (the baseline comes first and is not one)."""
        return max(self.total - len(self.queue) - 1, 0)


class Budget:
    """Minutes a sweep may spend; the baseline and the first candidate always run."""

    ALWAYS_RUN = 2

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.clock = clock
        self.start = clock()
        self.walls: list[float] = []

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float | None:
        """Seconds of budget left (None: no budget)."""
        return None if self.seconds is None else max(self.seconds - self.elapsed(), 0.0)

    def allows(self, predicted_s: float, essential: bool = False) -> bool:
        """Whether a trial expected to take ``predicted_s`` seconds (plus whatever must still
        run after it) fits what is left."""
        if self.seconds is None or essential or len(self.walls) < self.ALWAYS_RUN:
            return True
        return self.elapsed() + predicted_s <= self.seconds

    def ran(self, wall_s: float) -> None:
        self.walls.append(wall_s)


def clock_text(seconds: float) -> str:
    """``h:mm:ss``."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
