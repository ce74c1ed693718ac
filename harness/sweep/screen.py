"""Screen, then confirm: time every candidate briefly, then measure only the promising ones in full.

A full trial times adaptive repeats (6 to 20) of the scenario and then runs fidelity (and WER with
real weights); most of a large grid's candidates are plainly slower than the best few, and that
much is visible after a few repeats of a short request. So a screened sweep runs the baseline,
then one *screening* trial per candidate (``screen.fixed_frames`` frames, ``screen.repeats``
repeats, no fidelity, no WER, in the grid's order of promise), then the *confirmation*: the full
trial of the ``screen.keep`` fastest screens and of every other one within the noise of the
fastest (its repeats' range overlaps the fastest one's, or its objective is within
``quality.tie_tolerance`` of it), fastest first. A NOISY screen is confirmed too: its rank cannot
be trusted. Only confirmed trials can win. A screen compiles the candidate's graphs, so its
confirmation starts warm from the compile cache. "Fastest" is the best objective: under
``quality.objective=throughput`` the most aggregate audio per second, among the screens whose
concurrent requests keep to real time and the first-audio SLO (the others are not confirmed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from harness.sweep.config import ScenarioConf, SweepConf
from harness.sweep.grid import TrialSpec, config_hash, trial_inputs
from harness.sweep.selection import throughput_failures
from harness.trial.record import CONFIRM, SCREEN, TrialRecord

log = logging.getLogger(__name__)

SUFFIX = " (screen)"


def screen_scenario(conf: SweepConf) -> ScenarioConf:
    """The sweep's scenario, shortened for screening."""
    s, screen = conf.scenario, conf.screen
    return dataclasses.replace(
        s,
        name=f"{s.name}-screen",
        fixed_frames=min(screen.fixed_frames, s.fixed_frames),
        warmup_runs=1,
        repeats=screen.repeats,
        max_repeats=screen.repeats,
        max_repeat_s=screen.max_repeat_s,
    )


def screening_on(conf: SweepConf, candidates: int) -> bool:
    """Whether this sweep screens: ``screen.enabled``, else when it has enough candidates. Only a
    grid run here screens (Optuna picks each trial from the last, Ray runs them side by side)."""
    if conf.search.name != "grid" or conf.launcher.name != "local":
        if conf.screen.enabled:
            log.warning("screen.enabled needs search=grid and launcher=local: not screening")
        return False
    if conf.screen.enabled is not None:
        return conf.screen.enabled
    return candidates >= conf.screen.min_candidates


def screen_spec(spec: TrialSpec, conf: SweepConf, checkpoint_hash: str) -> TrialSpec:
    """``spec``'s screening trial: the same knobs on the screening scenario."""
    inputs = trial_inputs(conf, checkpoint_hash)
    inputs["scenario"] = dataclasses.asdict(screen_scenario(conf))
    digest = config_hash(spec.kind, spec.knobs, inputs)
    return dataclasses.replace(spec, name=spec.name + SUFFIX, config_hash=digest, stage=SCREEN)


def candidate_name(name: str) -> str:
    """The candidate a screening trial's name stands for."""
    return name.removesuffix(SUFFIX)


@dataclass(frozen=True)
class Verdict:
    """Whether a screened candidate is confirmed, and why (the report shows it)."""

    confirm: bool
    why: str


def _spread(record: TrialRecord, objective: str) -> tuple[float, float]:
    """The range of the screen's repeats (latency), else the objective alone."""
    value = record.metric(objective) or 0.0
    if objective != "latency_p50_s":
        return value, value
    totals = [run["total_s"] for run in record.runs if run.get("total_s") is not None]
    return (min(totals), max(totals)) if totals else (value, value)


def _within_noise(record: TrialRecord, best: TrialRecord, conf: SweepConf) -> str | None:
    objective = conf.quality.metric
    low, high = _spread(record, objective)
    best_low, best_high = _spread(best, objective)
    if low <= best_high and best_low <= high:
        return (
            f"within the noise of the fastest: its repeats ({low:.3g}-{high:.3g} s) overlap "
            f"the fastest's ({best_low:.3g}-{best_high:.3g} s)"
        )
    mine, theirs = record.metric(objective), best.metric(objective)
    if mine is not None and theirs and abs(mine - theirs) <= conf.quality.tie_tolerance * theirs:
        return f"within quality.tie_tolerance of the fastest ({mine:.4g} vs {theirs:.4g})"
    return None


def _unusable(record: TrialRecord, conf: SweepConf) -> str | None:
    """Why a screen that ran cannot be ranked: no objective, over the VRAM budget, or (under the
    throughput objective) concurrent requests slower than real time or past the first-audio SLO."""
    quality, budget = conf.quality, conf.hardware.vram_budget_mb
    if record.metric(quality.metric) is None:
        return f"{quality.metric} not measured"
    reserved = record.metric("peak_reserved_mb")
    if budget and reserved is not None and reserved > budget:
        return f"peak reserved VRAM {reserved:.0f} MB > {budget} MB"
    return "; ".join(throughput_failures(record, quality)) or None


def _ranked(screens: Sequence[TrialRecord], conf: SweepConf) -> list[TrialRecord]:
    usable = [r for r in screens if r.ok and _unusable(r, conf) is None]
    sign = 1.0 if conf.quality.goal == "min" else -1.0
    return sorted(usable, key=lambda r: sign * r.metric(conf.quality.metric))


def pick_confirmations(screens: Sequence[TrialRecord], conf: SweepConf) -> dict[str, Verdict]:
    """A verdict for every screening record, by its name: the ``keep`` best, those within the
    noise of the best and the NOISY ones are confirmed."""
    ranked = _ranked(screens, conf)
    verdicts: dict[str, Verdict] = {}
    for r in screens:
        if not r.ok:
            verdicts[r.name] = Verdict(False, f"{r.status}: {r.headline}")
        elif r not in ranked:
            verdicts[r.name] = Verdict(False, _unusable(r, conf) or "not ranked")
    for rank, r in enumerate(ranked, 1):
        place = f"#{rank} of {len(ranked)}"
        noise = _within_noise(r, ranked[0], conf) if rank > 1 else None
        if rank <= conf.screen.keep:
            verdicts[r.name] = Verdict(True, f"{place}: among the {conf.screen.keep} fastest")
        elif noise:
            verdicts[r.name] = Verdict(True, f"{place}: {noise}")
        elif r.noisy:
            verdicts[r.name] = Verdict(True, f"{place}: NOISY, so its rank cannot be trusted")
        else:
            objective = conf.quality.metric
            verdicts[r.name] = Verdict(
                False,
                f"{place}: {r.metric(objective):.4g} against the fastest's "
                f"{ranked[0].metric(objective):.4g}, outside its noise",
            )
    return verdicts


class ScreenedPlan:
    """The baseline, every candidate's screen, then the confirmations (see the module)."""

    def __init__(self, specs: Sequence[TrialSpec], conf: SweepConf, checkpoint_hash: str) -> None:
        self.conf = conf
        self.full = {spec.name: spec for spec in specs[1:] if spec.runs}
        self.queue: list[TrialSpec] = [specs[0]] + [
            screen_spec(spec, conf, checkpoint_hash) if spec.runs else spec for spec in specs[1:]
        ]
        self.screens: list[TrialRecord] = []
        self.verdicts: dict[str, Verdict] = {}
        self.confirming = False
        self.confirmed = 0
        self.handed = 0
        self.total = len(self.queue) + min(conf.screen.keep, len(self.full))

    def next_spec(self) -> TrialSpec | None:
        if not self.queue and not self.confirming:
            self._start_confirming()
        if not self.queue:
            return None
        self.handed += 1
        return self.queue.pop(0)

    def _start_confirming(self) -> None:
        self.confirming = True
        self.verdicts = pick_confirmations(self.screens, self.conf)
        ranked = _ranked(self.screens, self.conf)
        order = ranked + [r for r in self.screens if r not in ranked]
        self.queue = [
            dataclasses.replace(self.full[candidate_name(r.name)], stage=CONFIRM)
            for r in order
            if self.verdicts[r.name].confirm
        ]
        self.total = self.handed + len(self.queue)
        log.info(
            "screening done: confirming %d of %d candidates: %s",
            len(self.queue),
            len(self.screens),
            ", ".join(spec.name for spec in self.queue) or "none",
        )

    def done(self, record: TrialRecord) -> None:
        if record.screened:
            self.screens.append(record)
        elif record.stage == CONFIRM:
            self.confirmed += 1

    def remaining(self) -> list[str]:
        return [candidate_name(spec.name) for spec in self.queue]

    def upcoming(self) -> list[TrialSpec]:
        """While screening, the screens left and ``keep`` confirmations standing in for the ones
        screening will pick (every confirmation is expected to cost the same: a warm trial)."""
        if self.confirming:
            return list(self.queue)
        stand_ins = list(self.full.values())[: self.conf.screen.keep]
        return self.queue + [dataclasses.replace(spec, stage=CONFIRM) for spec in stand_ins]

    def drop(self, spec: TrialSpec) -> list[str]:
        """Out of time: while screening, the screens left go (and confirming starts); while
        confirming, the confirmations left."""
        dropped = [candidate_name(s.name) for s in (spec, *self.queue)]
        self.queue.clear()
        return dropped

    def essential(self, spec: TrialSpec) -> bool:
        """The fastest screen's confirmation runs whatever the budget: without it nothing could
        win."""
        return spec.stage == CONFIRM and self.confirmed == 0

    def reserve(self) -> list[TrialSpec]:
        """While screening: time for the confirmations (``keep`` of them) after the next screen."""
        return [] if self.confirming else self.upcoming()[len(self.queue) :]

    @property
    def asked_count(self) -> int:
        return max(self.handed - 1, 0)
