"""Choose the winning trial: the best objective among candidates that pass every gate.

The objective is ``latency`` (lowest p50 latency of one request) or ``throughput`` (most audio
seconds per second over a trial's concurrent requests; ``harness.sweep.config.OBJECTIVES``).
Gates: the trial ran, its timings were not disturbed by other processes (NOISY, unless
``allow_noisy``), fidelity within the thresholds, WER within ``max_wer_delta`` of the baseline
(only where WER means something, i.e. real weights), peak reserved VRAM within the hardware
budget, and (by default) a better objective than the baseline. Under ``throughput`` a server's
promises are gates too: every concurrent request faster than real time, and their first audio's
p95 within ``ttfa_slo_s`` (more aggregate audio that keeps callers waiting is no win).
Candidates whose 95 % intervals of the objective overlap the best one's are tied (without
intervals: objectives within ``tie_tolerance``), and the lowest peak memory among them wins. When
nothing passes the baseline wins, and every candidate keeps the reasons it failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import ConfigError
from engine.measure.fidelity import FIDELITY_GATES, gate_failures
from harness.sweep.config import QualityConf
from harness.trial.record import TrialRecord


@dataclass(frozen=True)
class Selection:
    """The winner (None only when even the baseline failed) and each candidate's gate failures."""

    winner: TrialRecord | None
    failures: dict[str, list[str]]
    summary: str
    tie: str | None = None  # how a tie on the objective was broken, when there was one

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
    return [f"fidelity {why}" for why in gate_failures(trial.fidelity, fidelity_gates(quality))]


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


def throughput_failures(trial: TrialRecord, quality: QualityConf) -> list[str]:
    """Under the throughput objective, why the trial's concurrent requests break what a server
    promises each caller: real time for every request, first audio within the SLO."""
    if quality.objective != "throughput":
        return []
    under = f"at concurrency {trial.metric('concurrency') or 1:.0f}"
    rtf, ttfa = trial.metric("per_request_rtf_max"), trial.metric("concurrent_ttfa_p95_s")
    reasons = []
    if rtf is None:
        reasons.append("per_request_rtf_max was not measured")
    elif rtf >= 1.0:
        reasons.append(f"slower than real time {under}: per_request_rtf_max {rtf:.3g} >= 1")
    if ttfa is None:
        reasons.append("concurrent_ttfa_p95_s was not measured")
    elif ttfa > quality.ttfa_slo_s:
        reasons.append(
            f"first audio p95 {ttfa:.3g} s {under} > quality.ttfa_slo_s {quality.ttfa_slo_s:g} s"
        )
    return reasons


def _baseline_reasons(
    trial: TrialRecord, baseline: TrialRecord | None, quality: QualityConf
) -> list[str]:
    if not quality.must_beat_baseline or baseline is None or not baseline.ok:
        return []
    mine, theirs = trial.metric(quality.metric), baseline.metric(quality.metric)
    if theirs is None or _better(mine, theirs, quality.goal):
        return []
    return [f"{quality.metric} {mine:.4g} does not beat the baseline's {theirs:.4g}"]


@dataclass(frozen=True)
class Gates:
    """The rules a sweep judges candidates by: its quality config and the machine's limits."""

    quality: QualityConf
    vram_budget_mb: float | None
    wer_applicable: bool
    allow_noisy: bool = False

    def failures(self, trial: TrialRecord, baseline: TrialRecord | None) -> list[str]:
        """Why ``trial`` may not win (empty when it passes every gate)."""
        quality = self.quality
        if not trial.ok:
            return [f"{trial.status}: {trial.headline}"]
        if trial.noisy and not self.allow_noisy:
            return [f"NOISY: {trial.noisy} (selection.allow_noisy=true lets it win)"]
        if trial.metric(quality.metric) is None:
            return [f"objective {quality.objective} ({quality.metric}) was not measured"]
        reasons = _fidelity_reasons(trial, quality)
        if self.wer_applicable:
            reasons += _wer_reasons(trial, baseline, quality.max_wer_delta)
        reasons += _vram_reasons(trial, self.vram_budget_mb)
        reasons += throughput_failures(trial, quality)
        return reasons + _baseline_reasons(trial, baseline, quality)

    def feasible(self, trial: TrialRecord, baseline: TrialRecord | None) -> bool:
        """Passes every gate but the baseline comparison: a point the Pareto front may hold."""
        relaxed = dataclasses.replace(
            self, quality=dataclasses.replace(self.quality, must_beat_baseline=False)
        )
        return not relaxed.failures(trial, baseline)


def interval(trial: TrialRecord, key: str) -> tuple[float, float] | None:
    """The 95 % interval of metric ``key`` (only medians have one), when the trial measured it."""
    low, high = trial.metric(f"{key}_ci_low"), trial.metric(f"{key}_ci_high")
    return None if low is None or high is None else (low, high)


def _tied(trial: TrialRecord, best: TrialRecord, quality: QualityConf) -> bool:
    key = quality.metric
    mine, theirs = interval(trial, key), interval(best, key)
    if mine is not None and theirs is not None:
        return mine[0] <= theirs[1] and theirs[0] <= mine[1]
    margin = abs(best.metric(key)) * quality.tie_tolerance
    return abs(trial.metric(key) - best.metric(key)) <= margin


def _memory(trial: TrialRecord) -> float:
    return trial.memory_mb if trial.memory_mb is not None else float("inf")


def _pick(passing: list[TrialRecord], quality: QualityConf) -> tuple[TrialRecord, str | None]:
    """Best objective; among those tied with it, the lowest peak memory (and why, if a tie)."""
    goal, key = quality.goal, quality.metric
    best = min(passing, key=lambda t: t.metric(key) if goal == "min" else -t.metric(key))
    tied = [t for t in passing if _tied(t, best, quality)]
    winner = min(tied, key=lambda t: (_memory(t), t is not best))
    if len(tied) == 1:
        return winner, None
    how = (
        "overlapping 95 % intervals"
        if interval(best, key) is not None
        else f"within {quality.tie_tolerance:.0%}"
    )
    others = ", ".join(t.name for t in tied if t is not winner)
    return winner, (
        f"{winner.name} tied on {key} with {others} ({how}); the lowest peak memory "
        f"({_memory(winner):.0f} MB) broke the tie"
    )


def select_winner(trials: Sequence[TrialRecord], gates: Gates) -> Selection:
    """Apply the gates to every candidate and pick the winner (see module docstring)."""
    quality = gates.quality
    baseline = next((t for t in trials if t.is_baseline), None)
    candidates = [t for t in trials if not t.is_baseline]
    failures = {t.name: gates.failures(t, baseline) for t in candidates}
    passing = [t for t in candidates if not failures[t.name]]
    if passing:
        winner, tie = _pick(passing, quality)
        return Selection(
            winner,
            failures,
            f"{winner.name} wins: best {quality.metric} ({quality.objective} objective) of "
            f"{len(passing)} passing",
            tie,
        )
    if baseline is not None and baseline.ok:
        return Selection(baseline, failures, "the baseline wins: no candidate passed every gate")
    return Selection(None, failures, "no winner: no candidate passed and the baseline did not run")


def pareto_front(trials: Sequence[TrialRecord], objective: str, goal: str) -> list[TrialRecord]:
    """The trials no other trial beats on both the objective and peak memory, best first."""
    sign = 1.0 if goal == "min" else -1.0
    points = [
        (sign * t.metric(objective), t.memory_mb, t)
        for t in trials
        if t.metric(objective) is not None and t.memory_mb is not None
    ]
    front = [
        p
        for p in points
        if not any(q[0] <= p[0] and q[1] <= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in points)
    ]
    return [t for _, _, t in sorted(front, key=lambda p: (p[0], p[1]))]
