"""``search=optuna``: Optuna's NSGA-II asks for candidates instead of walking the whole grid.

The search space is the grid's: every knob the preset's axes or points vary, over the values they
list plus the engine default. It is written as Hydra sweep overrides (``choice(...)``) and turned
into Optuna distributions by hydra-optuna-sweeper, whose NSGA-II sampler config builds the
sampler. Hydra's sweeper would launch each trial as its own Hydra job; the trials here go through
the sweep's loop instead (baseline first, one MLflow parent, resume by config hash, the budget),
so the study is driven with Optuna's ask/tell.

Two objectives are minimised, the quality objective (p50 latency, or under
``quality.objective=throughput`` the aggregate audio per second, negated) and peak memory; the
quality gates (fidelity, WER, VRAM budget, NOISY, and under throughput real time and the
first-audio SLO) are constraints: a candidate failing any is infeasible, so the front Optuna
converges to is the one the selection can choose from.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.config import NSGAIISamplerConfig

from engine.profile import Hardware
from harness.sweep.config import SweepConf
from harness.sweep.grid import TrialSpec, candidate_spec
from harness.sweep.plan import Plan
from harness.sweep.selection import Gates
from harness.sweep.vram import VramBound
from harness.trial.record import TrialRecord

log = logging.getLogger(__name__)
CONSTRAINTS = "constraints"
# optuna 2.10 (the version hydra-optuna-sweeper allows) flags NSGA-II constraints as experimental
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def search_space(conf: SweepConf, base: dict[str, Any]) -> list[str]:
    """The grid's values per knob (plus the engine default) as Hydra ``choice`` overrides."""
    values: dict[str, list[Any]] = {}
    for key, listed in conf.grid.axes.items():
        values.setdefault(key, []).extend(listed)
    for point in conf.grid.points:
        for key, value in point.items():
            values.setdefault(key, []).append(value)
    overrides = []
    for key, listed in values.items():
        distinct = list(dict.fromkeys([base[key], *listed]))
        if len(distinct) > 1:
            overrides.append(f"{key}=choice({','.join(str(v) for v in distinct)})")
    return overrides


def space_size(overrides: list[str]) -> int:
    """How many configurations the search space holds (the product of its choices)."""
    size = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        size *= len(list(override.sweep_iterator()))
    return size


def _typed(key: str, value: Any) -> Any:
    """A sampled choice back as the knob's typed value (Hydra encodes choices as strings)."""
    return OverridesParser.create().parse_overrides([f"{key}={value}"])[0].value()


class OptunaPlan(Plan):
    """The baseline, then ``n_trials`` candidates from NSGA-II, each told its result."""

    def __init__(
        self,
        conf: SweepConf,
        hw: Hardware,
        baseline: TrialSpec,
        base: dict[str, Any],
        inputs: dict[str, Any],
        wer_applicable: bool,
        bound: VramBound | None = None,
    ) -> None:
        self.conf, self.hw, self.base, self.inputs = conf, hw, base, inputs
        self.bound = bound
        self.gates = Gates(
            conf.quality, conf.hardware.vram_budget_mb, wer_applicable, conf.selection.allow_noisy
        )
        self.space = search_space(conf, base)
        if not self.space:
            raise ValueError(f"grid {conf.grid.name!r} varies no knob: nothing to search")
        self.distributions, _ = create_params_from_overrides(self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = instantiate(
            NSGAIISamplerConfig(seed=conf.search.seed, population_size=conf.search.population_size),
            constraints_func=lambda trial: trial.user_attrs.get(CONSTRAINTS, [1.0]),
        )
        self.study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        self.total = conf.search.n_trials + 1
        self.baseline_spec: TrialSpec | None = baseline
        self.baseline: TrialRecord | None = None
        self.asked: dict[str, tuple[optuna.trial.Trial, TrialSpec]] = {}
        self.results: dict[str, TrialRecord] = {}
        self.left = conf.search.n_trials

    def next_spec(self) -> TrialSpec | None:
        if self.baseline_spec is not None:
            spec, self.baseline_spec = self.baseline_spec, None
            return spec
        while self.left > 0:
            self.left -= 1
            trial = self.study.ask(self.distributions)
            params = {key: _typed(key, value) for key, value in trial.params.items()}
            overrides = {k: v for k, v in params.items() if v != self.base.get(k)}
            spec = candidate_spec(self.base, overrides, self.hw, self.inputs, self.bound)
            if spec.config_hash in self.results:  # asked again: answer from the first run
                log.info("optuna asked for %s again; reusing its result", spec.name)
                self._tell(trial, self.results[spec.config_hash])
                continue
            self.asked[spec.config_hash] = (trial, spec)
            return spec
        return None

    def done(self, record: TrialRecord) -> None:
        if record.is_baseline:
            self.baseline = record
            return
        self.results[record.config_hash] = record
        trial, _ = self.asked.pop(record.config_hash)
        self._tell(trial, record)

    def remaining(self) -> list[str]:
        return [f"{self.left} more Optuna suggestions"] if self.left else []

    def upcoming(self) -> list[TrialSpec]:
        """Suggestions are unknown until asked for: each stands as the engine default."""
        stand_in = candidate_spec(self.base, {}, self.hw, self.inputs)
        return ([self.baseline_spec] if self.baseline_spec else []) + [stand_in] * self.left

    def drop(self, spec: TrialSpec) -> list[str]:
        dropped = [spec.name, *self.remaining()]
        self.left = 0
        return dropped

    @property
    def asked_count(self) -> int:
        """Suggestions taken so far, repeats of an earlier configuration included."""
        return self.conf.search.n_trials - self.left

    def _tell(self, trial: optuna.trial.Trial, record: TrialRecord) -> None:
        objective, memory = record.metric(self.conf.quality.metric), record.memory_mb
        if not record.ok or objective is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        ok = self.gates.feasible(record, self.baseline)
        trial.set_user_attr(CONSTRAINTS, [0.0 if ok else 1.0])
        sign = 1.0 if self.conf.quality.goal == "min" else -1.0
        self.study.tell(trial, [sign * objective, memory if memory is not None else 0.0])
