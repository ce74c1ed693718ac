"""The sweep's estimate and budget (pure: plans made from the real grids, records by hand):

- a full-gpu plan compiles cold once per distinct graph (the figures docs/sweep.md states, before
  and after the compile cache was shared by every profile);
- each figure comes from this sweep, else earlier sweeps on the preset, else its labelled default;
- a budget keeps time for the confirmations and leaves out whole blocks of screens;
- the GPU grid has a default budget, ``budget_minutes=inf`` lifts it, and the command that runs
  what a budget left out keeps the sweep's other overrides.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.progress import Progress

from engine.profile import EngineProfile, resolve_profile
from harness.sweep.compose import compose_config
from harness.sweep.config import SweepConf
from harness.sweep.estimate import COLD, EAGER, WARM, Estimator, TrialTimes, estimate_lines
from harness.sweep.grid import build_trials
from harness.sweep.loop import LeftColumn
from harness.sweep.plan import GridPlan, order_by_promise
from harness.sweep.run import planning_hardware, rerun_command
from harness.sweep.screen import ScreenedPlan, screen_scenario
from harness.trial.record import CANDIDATE, CONFIRM, OK, SCREEN, TrialRecord

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sweep.md"
# What a compile cache folder was keyed on before it was shared: every knob but these.
OLD_FOLDER_IGNORED = {"cache_limit", "prefix_cache_mb", "warmup_buckets"}


def conf(*overrides: str) -> SweepConf:
    return OmegaConf.to_object(compose_config(list(overrides)))


def full_gpu(*overrides: str) -> tuple[SweepConf, Estimator, list]:
    c = conf("grid=full-gpu", "hardware=rtx4060", "scenario=long", *overrides)
    hw = planning_hardware(c.hardware)
    specs = order_by_promise(build_trials(c, hw, "ckpt"), {})
    times = TrialTimes(c.hardware.times, c.hardware.name)
    estimator = Estimator(times, hw, c.scenario.fixed_frames, screen_scenario(c).fixed_frames)
    return c, estimator, specs


def old_cold_compiles(estimator: Estimator, specs: list) -> int:
    """Trials that compiled cold when each profile had its own cache folder."""
    built, cold = set(), 0
    for spec in specs[1:]:  # the baseline (upstream, eager) compiles nothing
        if not spec.runs:
            continue
        profile = resolve_profile(EngineProfile.model_validate(spec.knobs), estimator.hw)[0]
        knobs = profile.knobs().items()
        folder = tuple(sorted((k, str(v)) for k, v in knobs if k not in OLD_FOLDER_IGNORED))
        units = {(folder, unit) for unit in estimator.units(spec)}
        cold += bool(units - built)
        built |= units
    return cold


def test_a_full_gpu_plan_compiles_each_distinct_graph_once_as_the_docs_say() -> None:
    """rtx4060: 35 compiled candidates each compiled cold in their own folder; sharing the
    folder, 11 do (reduce-overhead and default x int8, int4, none, nf4; fp16; max-autotune; the
    compiled codec), and the 24 others start warm. The grid as it was then: the max_batch points
    came later."""
    c, estimator, specs = full_gpu()
    specs = [spec for spec in specs if spec.knobs.get("max_batch", 1) == 1]
    forecast = estimator.forecast(GridPlan(specs).upcoming(), None)
    before, after = old_cold_compiles(estimator, specs), forecast.count(COLD)
    assert (before, after, forecast.count(WARM)) == (35, 11, 24)
    text = " ".join(DOCS.read_text().split())
    assert f"{before} cold compiles before, {after} after" in text


def test_a_screened_full_gpu_plan_confirms_warm() -> None:
    c, estimator, specs = full_gpu()
    plan = ScreenedPlan(specs, c, "ckpt")
    forecast = estimator.forecast(plan.upcoming(), None)
    kinds = {(spec.stage, kind) for spec, kind, _ in forecast.rows if spec.runs}
    assert (CONFIRM, WARM) in kinds and (CONFIRM, COLD) not in kinds
    # The 11 of the max_batch 1 candidates, and one for each of the three batched points: a
    # batched step over 4 or 8 slot rows, in int8 or bf16, is a graph no other candidate builds.
    assert forecast.count(COLD) == 11 + 3 and forecast.count(EAGER) >= 12


def record(name: str, wall: float, compile_s: float | None, misses: float | None, stage=None):
    r = TrialRecord(name, CANDIDATE, name, {"compile_decode": "default"}, OK, stage=stage)
    r.metrics = {"compile_s": compile_s or 0.0}
    if misses is not None:
        r.metrics["fxgraph_cache_miss"] = misses
    r.started_at, r.ended_at = 0.0, wall
    return r


def test_figures_come_from_this_sweep_then_earlier_sweeps_then_labelled_defaults() -> None:
    c = conf("hardware=rtx4060")
    past = [record("a", 500.0, 400.0, 3.0), record("b", 200.0, 50.0, 0.0)]
    past.append(record("old", 900.0, 700.0, None))  # no counters: cold or warm is unknown
    times = TrialTimes.from_history(c.hardware.times, "rtx4060", past)
    assert times.figure("compile_cold").seconds == 400.0
    assert times.figure("compile_warm").seconds == 50.0
    assert times.figure("trial").seconds == 125.0  # median of 100 and 150
    assert "earlier sweeps on rtx4060" in times.figure("trial").source
    screen = times.figure(SCREEN)
    assert screen.seconds == 45.0 and "default (projected for a desktop GPU, not measured)" in (
        screen.source
    )
    times.learn(record("now", 300.0, 280.0, 2.0))
    assert times.figure("compile_cold").seconds == 280.0
    assert times.figure("compile_cold").source == "median of 1 in this sweep"


def test_a_budget_keeps_time_for_the_confirmations_and_drops_screens_as_a_block() -> None:
    c, estimator, specs = full_gpu()
    plan = ScreenedPlan(specs, c, "ckpt")
    forecast = estimator.forecast(plan.upcoming(), 60 * 60.0, always_run=2)
    stages = [
        (spec.stage, runs) for (spec, _, _), runs in zip(forecast.rows, forecast.runs, strict=True)
    ]
    screens = [runs for stage, runs in stages if stage == SCREEN]
    assert screens[0] and not screens[-1]
    assert screens == sorted(screens, reverse=True)  # once one is out, the rest are
    assert all(runs for stage, runs in stages if stage == CONFIRM)
    assert forecast.within_budget_s <= 60 * 60.0
    lines = estimate_lines(c, estimator, forecast, "fishbench sweep budget_minutes=inf")
    assert re.search(
        r"budget 60 min \(the full-gpu grid's default\): \d+ of 54 trials fit", lines[2]
    )
    assert "expected to be left out: " in lines[2] and lines[3].endswith("budget_minutes=inf")
    assert "14 compile cold" in lines[0] and "rtx4060 default" in lines[1]


def test_the_gpu_grid_has_a_default_budget_that_inf_lifts() -> None:
    assert conf("grid=full-gpu").effective_budget() == (60.0, "the full-gpu grid's default")
    assert conf("grid=full-gpu", "budget_minutes=20").effective_budget()[0] == 20.0
    assert conf("grid=full-gpu", "budget_minutes=inf").effective_budget()[0] is None
    assert conf("grid=full-gpu", "launcher=ray").effective_budget()[0] is None
    assert conf("grid=quick-cpu").effective_budget()[0] is None


def test_the_rerun_command_keeps_the_overrides_and_lifts_the_budget() -> None:
    command = rerun_command(["grid=full-gpu", "budget_minutes=30", "scenario.repeats=10"])
    assert command == (
        "fishbench sweep grid=full-gpu scenario.repeats=10 budget_minutes=inf resume={id}"
    )
    multirun = rerun_command(["engine.chunk_size=8,32", "resume=last"], multirun=True)
    assert multirun.startswith("fishbench sweep -m engine.chunk_size=8,32 budget_minutes=inf")


@pytest.mark.parametrize(("elapsed", "shown"), [(10.0, "~0:00:50 left"), (75.0, "0:00:15 over")])
def test_the_progress_bar_shows_the_time_left_of_a_trial(elapsed: float, shown: str) -> None:
    progress = Progress()
    task_id = progress.add_task("trial", expected_s=60.0, budget_s=600.0)
    task = progress.tasks[task_id]
    task.start_time, task.stop_time = 0.0, elapsed  # elapsed = stop - start
    text = LeftColumn().render(task).plain
    assert text.startswith(shown) and "budget left 0:" in text
