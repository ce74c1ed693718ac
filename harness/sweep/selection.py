"""Choose the winning trial: the best objective among candidates that pass every gate.

Gates: the trial ran, fidelity within the thresholds, WER within ``max_wer_delta`` of the
baseline (only where WER means something, i.e. real weights), peak reserved VRAM within the
hardware budget, and (by default) a better objective than the baseline. Objectives within
``tie_tolerance`` of the best count as a tie, which the lower peak memory wins. When nothing
passes the baseline wins, and every candidate keeps the reasons it failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import ConfigError
from engine.fidelity import FIDELITY_GATES, passes_gates
from harness.sweep.config import QualityConf
from harness.trial.record import TrialRecord


@dataclass(frozen=True)
class Selection:
    """The winner (None only when even the baseline failed) and each candidate's gate failures."""

    winner: TrialRecord | None
    failures: dict[str, list[str]]
    summary: str

    @property
    def baseline_won(self) -> bool:
        return self.winner is not None and self.winner.is_baseline


def fidelity_gates(quality: QualityConf) -> dict[str, float]:
    """The engine's fidelity thresholds with the quality config's overrides applied."""
    unknown = sorted(set(quality.fidelity_gates) - set(FIDELITY_GATES))
    if unknown:
        raise ConfigError(f"unknown fidelity gates {unknown}; known: {', '.join(FIDELITY_GATES)}")
    return {**FIDELITY_GATES, **quality.fidelity_gates}


def _better(a: float, b: float, goal: str) -> bool:
    return a < b if goal == "min" else a > b


def _fidelity_reasons(trial: TrialRecord, quality: QualityConf) -> list[str]:
    if trial.fidelity is None:
        return [f"fidelity not measured: {trial.notes.get('fidelity', 'unknown reason')}"]
    return [f"fidelity {why}" for why in passes_gates(trial.fidelity, fidelity_gates(quality))]


def _wer_reasons(trial: TrialRecord, baseline: TrialRecord | None, max_delta: float) -> list[str]:
    base_wer = baseline.wer if baseline is not None else None
    if trial.wer is None or base_wer is None:
        return ["WER not available for this trial or the baseline"]
    if trial.wer > base_wer + max_delta:
        return [f"WER {trial.wer:.3f} > baseline {base_wer:.3f} + {max_delta}"]
    return []


def _vram_reasons(trial: TrialRecord, budget_mb: float | None) -> list[str]:
    reserved = trial.metric("peak_reserved_mb")
    if budget_mb is None or reserved is None or reserved <= budget_mb:
        return []
    return [f"peak reserved VRAM {reserved:.0f} MB > budget {budget_mb:.0f} MB"]


def _baseline_reasons(
    trial: TrialRecord, baseline: TrialRecord | None, quality: QualityConf
) -> list[str]:
    if not quality.must_beat_baseline or baseline is None or not baseline.ok:
        return []
    mine, theirs = trial.metric(quality.objective), baseline.metric(quality.objective)
    if theirs is None or _better(mine, theirs, quality.objective_goal):
        return []
    return [f"{quality.objective} {mine:.4g} does not beat the baseline's {theirs:.4g}"]


def gate_failures(
    trial: TrialRecord,
    baseline: TrialRecord | None,
    quality: QualityConf,
    vram_budget_mb: float | None,
    wer_applicable: bool,
) -> list[str]:
    """Why ``trial`` may not win (empty when it passes every gate)."""
    if not trial.ok:
        return [f"{trial.status}: {trial.headline}"]
    if trial.metric(quality.objective) is None:
        return [f"objective {quality.objective} was not measured"]
    reasons = _fidelity_reasons(trial, quality)
    if wer_applicable:
        reasons += _wer_reasons(trial, baseline, quality.max_wer_delta)
    return (
        reasons + _vram_reasons(trial, vram_budget_mb) + _baseline_reasons(trial, baseline, quality)
    )


def _pick(passing: list[TrialRecord], quality: QualityConf) -> TrialRecord:
    """Best objective; among those within the tie tolerance of it, the lowest peak memory."""
    goal, key = quality.objective_goal, quality.objective
    best = min(passing, key=lambda t: t.metric(key) if goal == "min" else -t.metric(key))
    margin = abs(best.metric(key)) * quality.tie_tolerance
    tied = [t for t in passing if abs(t.metric(key) - best.metric(key)) <= margin]
    return min(
        tied,
        key=lambda t: (t.memory_mb if t.memory_mb is not None else float("inf"), t is not best),
    )


def select_winner(
    trials: Sequence[TrialRecord],
    quality: QualityConf,
    vram_budget_mb: float | None,
    wer_applicable: bool,
) -> Selection:
    """Apply the gates to every candidate and pick the winner (see module docstring)."""
    baseline = next((t for t in trials if t.is_baseline), None)
    candidates = [t for t in trials if not t.is_baseline]
    failures = {
        t.name: gate_failures(t, baseline, quality, vram_budget_mb, wer_applicable)
        for t in candidates
    }
    passing = [t for t in candidates if not failures[t.name]]
    if passing:
        winner = _pick(passing, quality)
        return Selection(
            winner,
            failures,
            f"{winner.name} wins: best {quality.objective} of {len(passing)} passing",
        )
    if baseline is not None and baseline.ok:
        return Selection(baseline, failures, "the baseline wins: no candidate passed every gate")
    return Selection(None, failures, "no winner: no candidate passed and the baseline did not run")
