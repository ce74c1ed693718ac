"""Expand a grid into trials: the baseline first, then one candidate per distinct profile.

A candidate whose swept knobs this machine cannot honour (``resolve_profile`` would change them,
e.g. fp16 or reduce-overhead on CPU) is marked SKIPPED with the engine's own reason, so it shows
up in MLflow and the report instead of being silently run as something else. So is one whose
resident memory the perf model prices above the VRAM budget (``harness.sweep.vram``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from engine.errors import ConfigError
from engine.profile import EngineProfile, Hardware, resolve_profile, upstream_precision
from harness.sweep.config import SweepConf
from harness.trial.record import BASELINE, CANDIDATE, FAILED, SKIPPED, TrialRecord

if TYPE_CHECKING:
    from harness.sweep.vram import VramBound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSpec:
    """A trial to run (or record without running, when ``status`` is already decided)."""

    name: str
    kind: str
    knobs: dict[str, Any]
    config_hash: str
    status: str | None = None  # SKIPPED or FAILED before running
    reason: str | None = None
    stage: str | None = None  # SCREEN or CONFIRM in a screened sweep (``harness.sweep.screen``)

    @property
    def is_baseline(self) -> bool:
        return self.kind == BASELINE

    @property
    def runs(self) -> bool:
        """False when the spec's outcome (SKIPPED, invalid) is decided without running it."""
        return self.status is None

    def record(self) -> TrialRecord:
        return TrialRecord(
            self.name,
            self.kind,
            self.config_hash,
            dict(self.knobs),
            reason=self.reason,
            stage=self.stage,
        )


def config_hash(kind: str, knobs: dict[str, Any], inputs: dict[str, Any]) -> str:
    """Identity of a trial: what runs, and on what (scenario, weights, hardware preset)."""
    payload = {"kind": kind, "knobs": knobs, "inputs": inputs}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def grid_overrides(
    axes: dict[str, list[Any]], points: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The cartesian product of ``axes``, then each explicit point."""
    if axes:
        keys = list(axes)
        for values in itertools.product(*(axes[key] for key in keys)):
            yield dict(zip(keys, values, strict=True))
    yield from (dict(point) for point in points)


def trial_name(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in overrides.items()) or "engine-default"


def _skip_reason(requested: EngineProfile, swept: dict[str, Any], hw: Hardware) -> str | None:
    active, fallbacks = resolve_profile(requested, hw)
    changed = [
        key for key, value in swept.items() if value != "auto" and getattr(active, key) != value
    ]
    reasons = [str(fallback) for fallback in fallbacks if fallback.knob in changed]
    return "; ".join(reasons) if changed else None


def baseline_spec(conf: SweepConf, hw: Hardware, inputs: dict[str, Any]) -> TrialSpec:
    knobs = {
        "device": hw.device,
        "precision": upstream_precision(hw.device),
        "compile": conf.baseline.compile,
    }
    return TrialSpec("baseline", BASELINE, knobs, config_hash(BASELINE, knobs, inputs))


def candidate_spec(
    base: dict[str, Any],
    overrides: dict[str, Any],
    hw: Hardware,
    inputs: dict[str, Any],
    bound: VramBound | None = None,
) -> TrialSpec:
    """The candidate ``overrides`` make of ``base``: SKIPPED when ``hw`` cannot run it as asked
    or (with a ``bound``) its memory cannot fit the VRAM budget, FAILED when it is no profile."""
    knobs = {**base, **overrides}
    name = trial_name(overrides)
    try:
        requested = EngineProfile.model_validate(knobs)
    except ValidationError as exc:
        digest = config_hash(CANDIDATE, knobs, inputs)
        return TrialSpec(name, CANDIDATE, knobs, digest, FAILED, f"invalid profile: {exc}")
    knobs = requested.knobs()
    digest = config_hash(CANDIDATE, knobs, inputs)
    reason = _skip_reason(requested, overrides, hw)
    if reason is None and bound is not None:
        reason = bound.refusal(requested, hw)
    return TrialSpec(name, CANDIDATE, knobs, digest, SKIPPED if reason else None, reason)


def trial_inputs(conf: SweepConf, checkpoint_hash: str) -> dict[str, Any]:
    """What every trial of the sweep runs on (part of each trial's identity)."""
    if conf.engine.device not in ("auto", conf.hardware.device):
        raise ConfigError(
            f"engine.device={conf.engine.device} contradicts "
            f"hardware={conf.hardware.name} ({conf.hardware.device})"
        )
    return {
        "scenario": dataclasses.asdict(conf.scenario),
        "checkpoint": checkpoint_hash,
        "hardware": conf.hardware.name,
    }


def base_knobs(conf: SweepConf) -> dict[str, Any]:
    """The engine group's knobs every candidate starts from, on the hardware's device."""
    return {**dataclasses.asdict(conf.engine), "device": conf.hardware.device}


def build_trials(
    conf: SweepConf, hw: Hardware, checkpoint_hash: str, bound: VramBound | None = None
) -> list[TrialSpec]:
    """Baseline, then the grid's candidates in order, each distinct configuration once (those
    over the VRAM ``bound`` SKIPPED)."""
    inputs = trial_inputs(conf, checkpoint_hash)
    base = base_knobs(conf)
    specs = [baseline_spec(conf, hw, inputs)]
    seen = {specs[0].config_hash: specs[0].name}
    for overrides in grid_overrides(conf.grid.axes, conf.grid.points):
        spec = candidate_spec(base, overrides, hw, inputs, bound)
        if spec.config_hash in seen:
            log.info(
                "%s is the same configuration as %s: run once", spec.name, seen[spec.config_hash]
            )
            continue
        seen[spec.config_hash] = spec.name
        specs.append(spec)
    return specs
