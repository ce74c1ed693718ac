"""Overrides the sweep-level tests share (imported as ``sweep_args``, like ``faults``)."""

from __future__ import annotations

from collections.abc import Callable

from harness.sweep.conclude import SweepOutcome

TinySweep = Callable[..., SweepOutcome]  # what the tiny_sweep fixture (conftest.py) returns

# Short trials and no NOISY re-runs: for tests that judge what a sweep records, not its timings.
SHORT = (
    "scenario.fixed_frames=8",
    "scenario.warmup_runs=1",
    "scenario.repeats=2",
    "scenario.max_repeats=2",
    "scenario.fidelity_frames=4",
    "isolation.retries=0",
)
