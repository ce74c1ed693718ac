"""How long a sweep will take, said before its first trial, and what its budget and progress bar
predict from.

A trial costs its compile plus the rest (start, load, the untimed and timed requests, fidelity,
WER). Its compile is *cold* when it builds a graph unit (``engine.compile_cache.compiled_graphs``:
a frame step, a prefill, a codec length under the knobs that shape it) that no trial before it
built and the compile cache does not hold, *warm* when every unit it needs is there, and nothing
when it runs eager. Each of the four figures (cold compile, warm compile, rest of a trial, rest
of a screening trial) comes from, in order: this sweep's own trials so far, the records of earlier
sweeps on this hardware preset (``fxgraph_cache_miss`` tells their cold compiles from warm ones),
and the preset's ``hardware.times`` defaults, which are labelled as such.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.compile_cache import built_graphs, cache_folder, compiled_graphs
from engine.profile import EngineProfile, Hardware, resolve_profile
from harness.sweep.config import SweepConf, TrialTimesConf
from harness.sweep.grid import TrialSpec
from harness.sweep.plan import clock_text
from harness.sweep.screen import candidate_name
from harness.trial.record import CONFIRM, SCREEN, TrialRecord

PARTS = ("compile_cold", "compile_warm", "trial", "screen")
LISTED = 8  # trial names an estimate line lists before "and N more"
COLD, WARM, EAGER = "cold", "warm", "eager"


@dataclass(frozen=True)
class Figure:
    """One estimated duration and where it comes from."""

    seconds: float
    source: str


def _compiled(record: TrialRecord) -> bool:
    knobs = record.active_knobs or record.knobs
    modes = (knobs.get("compile_decode", "none"), knobs.get("compile_codec", "none"))
    return modes != ("none", "none") or bool(knobs.get("compile_prefill") or knobs.get("compile"))


def _part_samples(record: TrialRecord) -> dict[str, float]:
    """What one finished trial says about each part's duration (a compiled trial recorded before
    trials counted their cache misses says nothing)."""
    wall = record.wall_s
    if wall is None or not record.ok:
        return {}
    rest = SCREEN if record.screened else "trial"
    misses = record.metric("fxgraph_cache_miss")
    if misses is None:
        return {} if _compiled(record) else {rest: wall}
    compile_s = record.metric("compile_s") or 0.0
    return {rest: max(wall - compile_s, 0.0), f"compile_{COLD if misses else WARM}": compile_s}


@dataclass
class TrialTimes:
    """The four figures, learnt from trials as they finish."""

    defaults: TrialTimesConf
    hardware: str
    past: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})
    now: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})

    @classmethod
    def from_history(
        cls, defaults: TrialTimesConf, hardware: str, records: Iterable[TrialRecord]
    ) -> TrialTimes:
        times = cls(defaults, hardware)
        for record in records:
            for part, seconds in _part_samples(record).items():
                times.past[part].append(seconds)
        return times

    def learn(self, record: TrialRecord) -> None:
        for part, seconds in _part_samples(record).items():
            self.now[part].append(seconds)

    def figure(self, part: str) -> Figure:
        if self.now[part]:
            n = len(self.now[part])
            return Figure(statistics.median(self.now[part]), f"median of {n} in this sweep")
        if self.past[part]:
            n = len(self.past[part])
            return Figure(
                statistics.median(self.past[part]),
                f"median of {n} in earlier sweeps on {self.hardware}",
            )
        default = getattr(self.defaults, f"{part}_s")
        return Figure(default, f"{self.hardware} default ({self.defaults.source})")


def reached_codec_lengths(profile: EngineProfile, frames: Sequence[int]) -> list[int]:
    """The padded codec lengths a trial's requests of ``frames`` frames decode at: the streamed
    windows (every warmed length up to ``codec_left_context + chunk_size``) and each whole-file
    decode's padded length."""
    from engine.codec import decode_lengths

    ladder = decode_lengths(profile)
    window = profile.codec_left_context + profile.chunk_size
    reached = {length for length in ladder if length <= window}
    for n in frames:
        reached.add(next((length for length in ladder if length >= n), ladder[-1]))
    return sorted(reached)


def trial_units(
    spec: TrialSpec, hw: Hardware, scenario_frames: int, model_max_seq_len: int | None = None
) -> set[str]:
    """The graph units ``spec``'s trial compiles on ``hw`` (none for an eager or upstream one);
    ``model_max_seq_len`` is the checkpoint's, which caps the KV cache as the engine does."""
    if spec.is_baseline:
        return {"upstream-compile"} if spec.knobs.get("compile") else set()
    if not spec.runs:
        return set()
    requested = EngineProfile.model_validate(spec.knobs)
    profile, _ = resolve_profile(requested, hw, model_max_seq_len, log_fallbacks=False)
    warmup = max(2 * profile.eos_check_interval, profile.chunk_size)  # engine.warmup's request
    lengths = reached_codec_lengths(profile, [warmup, scenario_frames])
    return compiled_graphs(profile, lengths)


@dataclass
class Forecast:
    """What the specs still to run are expected to cost, in order, against a budget."""

    rows: list[tuple[TrialSpec, str, float]]  # spec, cold/warm/eager, seconds
    runs: list[bool]  # whether each row is expected to start within the budget
    budget_s: float | None

    @property
    def total_s(self) -> float:
        return sum(seconds for _, _, seconds in self.rows)

    @property
    def within_budget_s(self) -> float:
        return sum(row[2] for row, runs in zip(self.rows, self.runs, strict=True) if runs)

    def count(self, kind: str) -> int:
        return sum(1 for _, k, _ in self.rows if k == kind)

    @property
    def left_out(self) -> list[TrialSpec]:
        return [row[0] for row, runs in zip(self.rows, self.runs, strict=True) if not runs]


def _fits(
    rows: list[tuple[TrialSpec, str, float]], budget_s: float | None, always_run: int
) -> list[bool]:
    """Which rows start within the budget, as the trial loop decides: the first ``always_run``
    and the first confirmation always do; a screen must leave time for the confirmations after
    it; once one screen (or any other trial) does not fit, the ones after it of its stage go."""
    if budget_s is None:
        return [True] * len(rows)
    reserve = sum(seconds for spec, _, seconds in rows if spec.stage == CONFIRM)
    elapsed, runs, closed, confirmed = 0.0, [], set(), False
    for index, (spec, _, seconds) in enumerate(rows):
        stage = spec.stage or ""
        need = seconds + (reserve if stage == SCREEN else 0.0)
        first_confirm = stage == CONFIRM and not confirmed
        fits = index < always_run or first_confirm or elapsed + need <= budget_s
        fits = fits and stage not in closed
        if not fits:
            closed.add(stage)
        if fits and spec.runs:
            elapsed += seconds
        if stage == CONFIRM:
            reserve -= seconds
            confirmed = confirmed or fits
        runs.append(fits)
    return runs


class Estimator:
    """Predicts each trial's duration from its compile (cold, warm, eager) and the figures."""

    def __init__(
        self,
        times: TrialTimes,
        hw: Hardware,
        scenario_frames: int,
        screen_frames: int,
        built: set[str] | None = None,
        model_max_seq_len: int | None = None,
    ) -> None:
        self.times, self.hw, self.model_max_seq_len = times, hw, model_max_seq_len
        self.frames = {None: scenario_frames, SCREEN: screen_frames}
        self.built = set(built or ())
        self.cached_units = len(self.built)
        self._units: dict[tuple[str, str | None], set[str]] = {}

    def units(self, spec: TrialSpec) -> set[str]:
        key = (spec.config_hash, spec.stage)
        if key not in self._units:
            frames = self.frames[SCREEN if spec.stage == SCREEN else None]
            self._units[key] = trial_units(spec, self.hw, frames, self.model_max_seq_len)
        return self._units[key]

    def compile_kind(self, spec: TrialSpec, built: set[str] | None = None) -> str:
        units = self.units(spec)
        if not units:
            return EAGER
        return WARM if units <= (self.built if built is None else built) else COLD

    def predict(self, spec: TrialSpec, built: set[str] | None = None) -> float:
        """Seconds ``spec`` is expected to take, with ``built`` (default: what is built now)."""
        if not spec.runs:
            return 0.0
        kind = self.compile_kind(spec, built)
        rest = self.times.figure(SCREEN if spec.stage == SCREEN else "trial").seconds
        if kind == EAGER:
            return rest
        return rest + self.times.figure(f"compile_{kind}").seconds

    def ran(self, spec: TrialSpec, record: TrialRecord) -> None:
        """Learn from a finished trial: its units are built now (if it ran), and its times."""
        if record.ok:
            self.built |= self.units(spec)
        self.times.learn(record)

    def forecast(
        self, specs: Sequence[TrialSpec], budget_s: float | None, always_run: int = 0
    ) -> Forecast:
        """``specs`` in order from now on: each one's compile kind and seconds, and which start
        within ``budget_s`` (the first ``always_run`` always do)."""
        built, rows = set(self.built), []
        for spec in specs:
            kind = self.compile_kind(spec, built) if spec.runs else EAGER
            rows.append((spec, kind, self.predict(spec, built)))
            built |= self.units(spec)
        return Forecast(rows, _fits(rows, budget_s, always_run), budget_s)


def cache_units(config_json: Path, device_name: str) -> set[str]:
    """The graph units earlier sweeps recorded in this machine's compile cache folder."""
    return built_graphs(cache_folder(config_json, device_name))


def estimate_lines(
    conf: SweepConf, estimator: Estimator, forecast: Forecast, rerun: str | None
) -> list[str]:
    """The estimate as the sweep prints it before its first trial (and its report repeats)."""
    runs = [spec for spec, _, _ in forecast.rows if spec.runs]
    decided = len(forecast.rows) - len(runs)
    screens = sum(1 for spec in runs if spec.stage == SCREEN)
    what = f"{len(runs)} trials to run" + (f" ({screens} screening)" if screens else "")
    if decided:
        what += f", {decided} decided without running (SKIPPED on this hardware or invalid)"
    figures = "; ".join(
        f"{label} {clock_text(fig.seconds)} ({fig.source})"
        for label, fig in (
            ("cold compile", estimator.times.figure("compile_cold")),
            ("warm compile", estimator.times.figure("compile_warm")),
            ("rest of a trial", estimator.times.figure("trial")),
            ("rest of a screening trial", estimator.times.figure(SCREEN)),
        )
    )
    lines = [
        f"estimate: {what}: {forecast.count(COLD)} compile cold, {forecast.count(WARM)} warm "
        f"(the compile cache holds {estimator.cached_units} graph units already), "
        f"{forecast.count(EAGER) - decided} eager; about {forecast.total_s / 60:.0f} min",
        f"estimate figures: {figures}",
    ]
    budget, source = conf.effective_budget()
    if budget is not None:
        lines += _budget_lines(forecast, budget, source, rerun)
    return lines


def _budget_lines(forecast: Forecast, budget: float, source: str, rerun: str | None) -> list[str]:
    """How many trials fit the budget, which are expected to be left out, and how to run all."""
    runs = [spec for spec, _, _ in forecast.rows if spec.runs]
    left = [candidate_name(spec.name) for spec in forecast.left_out if spec.runs]
    fit = len(runs) - len(left)
    line = (
        f"budget {budget:g} min ({source}): {fit} of {len(runs)} trials fit, about "
        f"{forecast.within_budget_s / 60:.0f} min"
    )
    if not left:
        return [line]
    more = len(left) - LISTED
    shown = ", ".join(left[:LISTED]) + (f" and {more} more" if more > 0 else "")
    lines = [f"{line}; expected to be left out: {shown}"]
    if rerun:
        lines.append(f"to run them all: {rerun}")
    return lines
