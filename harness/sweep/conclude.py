"""The end of a sweep: select the winner, export it, tag it champion, write the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness.sweep.config import SweepConf
from harness.sweep.export import export_profile
from harness.sweep.grid import TrialSpec, base_knobs
from harness.sweep.loop import OpenSweep, TrialsRun
from harness.sweep.machine import state_lines
from harness.sweep.report import (
    SweepContext,
    console_table,
    screening_lines,
    speedup,
    write_report,
)
from harness.sweep.selection import Gates, Selection, pareto_front, select_winner
from harness.trial.record import TrialRecord


@dataclass(frozen=True)
class SweepOutcome:
    folder: Path
    records: list[TrialRecord]
    selection: Selection
    profile_path: Path | None
    report_path: Path
    parent_run_id: str
    not_run: list[str]


def _search_lines(
    sweep: OpenSweep,
    run: TrialsRun,
    specs: list[TrialSpec],
    front: list[TrialRecord],
    asked: int,
) -> list[str]:
    """How candidates were found, the Pareto front, and (for Optuna) what the grid would cost."""
    conf = sweep.conf
    key = conf.quality.metric
    unit = "s" if conf.quality.objective == "latency" else "audio s/s"
    measured = sum(1 for r in run.records if not r.is_baseline and r.ok and not r.screened)
    points = ", ".join(
        f"{r.name} ({r.metric(key):.3g} {unit}, {r.memory_mb:.0f} MB)" for r in front
    )
    lines = [
        f"- Pareto front of {key} and peak memory among the {measured} "
        f"measured candidates that pass the quality gates: {points or 'empty'}"
    ]
    if conf.search.name != "optuna":
        return [f"- search: the `{conf.grid.name}` grid, most promising first", *lines]
    from harness.sweep.search import search_space, space_size

    space = search_space(conf, base_knobs(conf))
    grid_trials = len([s for s in specs if not s.is_baseline])
    mean_wall = sum(run.wall_s) / len(run.wall_s) if run.wall_s else 0.0
    distinct = sum(1 for r in run.records if not r.is_baseline)
    return [
        f"- search: Optuna NSGA-II over {', '.join(space)} ({space_size(space)} configurations): "
        f"{asked} suggestions, {distinct} distinct candidates, {measured} measured, "
        f"{sum(run.wall_s) / 60:.1f} min of trials; the full `{conf.grid.name}` grid is "
        f"{grid_trials} candidates, about {grid_trials * mean_wall / 60:.0f} min at this sweep's "
        f"mean of {mean_wall:.0f} s a trial",
        *lines,
    ]


def _export_winner(
    sweep: OpenSweep, selection: Selection, baseline: TrialRecord | None
) -> tuple[list[Path], Path | None, dict[str, float]]:
    """The winner's profile files (the dated one an MLflow artifact), and its metrics."""
    if selection.winner is None:
        return [], None, {}
    ratio = speedup(selection.winner, baseline)
    dated, profile_path = export_profile(
        selection.winner,
        sweep.hw,
        sweep.conf.hardware.name,
        sweep.checkpoint,
        ratio,
        Path(sweep.conf.reports_dir),
        sweep.folder.sweep_id,
        sweep.conf.quality.objective,
    )
    sweep.tracker.mark_champion(selection.winner.run_id, sweep.parent_id, sweep.tags["hardware_id"])
    return [dated], profile_path, {**selection.winner.metrics, "speedup_vs_baseline": ratio}


def _scenario_line(conf: SweepConf) -> str:
    s = conf.scenario
    return (
        f"{s.name} ({s.fixed_frames} frames; {s.repeats} to {s.max_repeats} timed repeats until "
        f"the p50's 95 % interval is within +-{s.ci_target_pct:g} %, at most {s.max_repeat_s:g} s)"
    )


def _timing_lines(run: TrialsRun, budget: str) -> list[str]:
    """What the sweep expected up front, and what its trials took."""
    took = sum(r.wall_s or 0.0 for r in run.records)
    return [
        *(f"- {line}" for line in run.estimate),
        f"- took: {took / 60:.1f} min of trials ({len(run.wall_s)} run here); budget: {budget}",
    ]


def conclude(
    sweep: OpenSweep,
    specs: list[TrialSpec],
    run: TrialsRun,
    start_state: dict[str, Any],
    console: Console,
    rerun: str | None = None,
) -> SweepOutcome:
    """Select and export the winner, tag it champion, write the report, print the table.

    Screening records rank candidates and never win: selection sees the other records only."""
    conf, checkpoint = sweep.conf, sweep.checkpoint
    records = [r for r in run.records if not r.screened]
    screens = [r for r in run.records if r.screened]
    gates = Gates(
        conf.quality,
        conf.hardware.vram_budget_mb,
        not checkpoint.is_synthetic,
        conf.selection.allow_noisy,
    )
    selection = select_winner(records, gates)
    baseline = next((r for r in records if r.is_baseline), None)
    sweep.tracker.tag_gates(records, selection.failures)
    sweep.tracker.tag_screening(screens, {k: v.why for k, v in run.verdicts.items()})
    artifacts, profile_path, winner_metrics = _export_winner(sweep, selection, baseline)
    candidates = [r for r in records if not r.is_baseline and gates.feasible(r, baseline)]
    front = pareto_front(candidates, conf.quality.metric, conf.quality.goal)
    # The plot's axes are p50 latency and memory, so the line it draws is latency's front.
    plotted = pareto_front(candidates, "latency_p50_s", "min")
    budget, source = conf.effective_budget()
    context = SweepContext(
        sweep_id=sweep.folder.sweep_id,
        checkpoint=str(checkpoint.path),
        checkpoint_hash=checkpoint.content_hash,
        synthetic=checkpoint.is_synthetic,
        hardware=conf.hardware.name,
        device_name=sweep.hw.name,
        torch_version=torch.__version__,
        grid=conf.grid.name,
        scenario=_scenario_line(conf),
        wer_note=sweep.tags.get("wer"),
        profile_path=profile_path,
        machine=state_lines(start_state, records),
        search=_search_lines(sweep, run, specs, front, run.asked),
        front=[r.name for r in plotted],
        objective=_objective_line(conf),
        not_run=run.not_run,
        budget_minutes=budget,
        timing=_timing_lines(run, f"{budget:g} min ({source})" if budget else source),
        screening=screening_lines(screens, run.verdicts, _screen_line(conf)),
        rerun=rerun,
    )
    report = write_report(sweep.folder.root, records, selection, context)
    artifacts += [
        report,
        sweep.folder.root / "latency_vs_memory.png",
        sweep.folder.root / "stages.png",
    ]
    parent_tags = {
        "winner": selection.summary,
        "noisy_trials": str(sum(bool(r.noisy) for r in records)),
    }
    if run.not_run:
        parent_tags["not_run"] = ", ".join(run.not_run)
    sweep.tracker.finish_parent(sweep.parent_id, winner_metrics, parent_tags, artifacts)
    title = f"sweep {sweep.folder.sweep_id} ({conf.grid.name})"
    console.print(console_table(records, selection, title))
    if conf.quality.objective == "throughput":
        console.print(console_table(records, selection, f"{title}: throughput", throughput=True))
    _print_tail(console, run, len(screens), rerun)
    console.print(f"report: {report}" + (f"\nprofile: {profile_path}" if profile_path else ""))
    return SweepOutcome(
        sweep.folder.root,
        run.records,
        selection,
        profile_path,
        report,
        sweep.parent_id,
        run.not_run,
    )


def _print_tail(console: Console, run: TrialsRun, screens: int, rerun: str | None) -> None:
    """Below the table: how many screened candidates were confirmed, what the budget left out."""
    if screens:
        confirmed = sum(v.confirm for v in run.verdicts.values())
        console.print(f"screened {screens} candidates, confirmed {confirmed} (report: both stages)")
    if run.not_run and rerun:
        console.print(f"not run within the budget: {', '.join(run.not_run)}\nto run them: {rerun}")


def _objective_line(conf: SweepConf) -> str:
    q = conf.quality
    if q.objective == "latency":
        return "latency: the lowest p50 latency of one request (`quality.objective=latency`)"
    return (
        "throughput: the most audio seconds per second over a trial's `max_batch` concurrent "
        "requests (`aggregate_audio_s_per_s`; concurrency 1 for max_batch 1), with every request "
        f"faster than real time and their first audio's p95 within {q.ttfa_slo_s:g} s "
        "(`quality.objective=throughput`, `quality.ttfa_slo_s`)"
    )


def _screen_line(conf: SweepConf) -> str:
    s = conf.screen
    return (
        f"Every candidate was first timed on {min(s.fixed_frames, conf.scenario.fixed_frames)} "
        f"frames, {s.repeats} repeats, without fidelity or WER; the {s.keep} fastest and those "
        "within their noise were then measured in full with the gates (the trials above)."
    )
