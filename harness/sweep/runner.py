"""The sweep: baseline first, then every candidate in its own process; MLflow, winner, report.

    python -m harness.sweep                                   # auto: quick-cpu or full-gpu
    python -m harness.sweep grid=full-gpu hardware=rtx4060 scenario.repeats=10
    python -m harness.sweep -m engine.quantization=none,int8 engine.chunk_size=8,32
    python -m harness.sweep resume=last                       # skip trials already finished

``run_sweep(cfg)`` locks the sweep folder (one sweep per folder: a second is refused, naming the
first's PID), opens the sweep and runs its trials (``harness.sweep.loop``), then selects, exports
and reports; ``main(argv)`` is the command line (also behind ``fishbench sweep``).
Without a real checkpoint in ``checkpoint`` the tiny synthetic one is made (once) in
``synthetic_checkpoint`` and the CPU grid runs.

MLflow is imported only when a sweep opens: under ``python -m harness.sweep`` every spawned trial
re-imports this module as its ``__main__``, and MLflow alone would add ~6 s to each trial's start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from harness.sweep.compose import build_config
from harness.sweep.config import SweepConf
from harness.sweep.export import export_profile
from harness.sweep.grid import TrialSpec, base_knobs, build_trials
from harness.sweep.inputs import check_hardware, prepare_checkpoint, prepare_reference
from harness.sweep.loop import (
    OpenSweep,
    TrialsRun,
    open_sweep,
    plan_trials,
    run_trials,
    run_trials_on_ray,
)
from harness.sweep.machine import busy_warning, state_lines, survey
from harness.sweep.plan import load_history, order_by_promise
from harness.sweep.report import SweepContext, console_table, speedup, write_report
from harness.sweep.selection import (
    Gates,
    Selection,
    fidelity_gates,
    pareto_front,
    select_winner,
)
from harness.sweep.store import SweepFolder
from harness.trial.record import TrialRecord

log = logging.getLogger(__name__)


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
    measured = sum(1 for r in run.records if not r.is_baseline and r.ok)
    points = ", ".join(
        f"{r.name} ({r.metric(conf.quality.objective):.3g} s, {r.memory_mb:.0f} MB)" for r in front
    )
    lines = [
        f"- Pareto front of {conf.quality.objective} and peak memory among the {measured} "
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


def conclude(
    sweep: OpenSweep,
    specs: list[TrialSpec],
    run: TrialsRun,
    start_state: dict[str, Any],
    console: Console,
) -> SweepOutcome:
    """Select and export the winner, tag it champion, write the report, print the table."""
    conf, checkpoint, records = sweep.conf, sweep.checkpoint, run.records
    wer_applicable = not checkpoint.is_synthetic
    gates = Gates(
        conf.quality, conf.hardware.vram_budget_mb, wer_applicable, conf.selection.allow_noisy
    )
    selection = select_winner(records, gates)
    baseline = next((r for r in records if r.is_baseline), None)
    sweep.tracker.tag_gates(records, selection.failures)
    artifacts, profile_path, winner_metrics = [], None, {}
    if selection.winner is not None:
        ratio = speedup(selection.winner, baseline)
        dated, profile_path = export_profile(
            selection.winner,
            sweep.hw,
            conf.hardware.name,
            checkpoint,
            ratio,
            Path(conf.reports_dir),
            sweep.folder.sweep_id,
        )
        sweep.tracker.mark_champion(
            selection.winner.run_id, sweep.parent_id, sweep.tags["hardware_id"]
        )
        winner_metrics = {**selection.winner.metrics, "speedup_vs_baseline": ratio}
        artifacts.append(dated)
    candidates = [r for r in records if not r.is_baseline and gates.feasible(r, baseline)]
    front = pareto_front(candidates, conf.quality.objective, conf.quality.objective_goal)
    scenario = conf.scenario
    context = SweepContext(
        sweep_id=sweep.folder.sweep_id,
        checkpoint=str(checkpoint.path),
        checkpoint_hash=checkpoint.content_hash,
        synthetic=checkpoint.is_synthetic,
        hardware=conf.hardware.name,
        device_name=sweep.hw.name,
        torch_version=torch.__version__,
        grid=conf.grid.name,
        scenario=(
            f"{scenario.name} ({scenario.fixed_frames} frames; {scenario.repeats} to "
            f"{scenario.max_repeats} timed repeats until the p50's 95 % interval is within "
            f"+-{scenario.ci_target_pct:g} %, at most {scenario.max_repeat_s:g} s)"
        ),
        wer_note=sweep.tags.get("wer"),
        profile_path=profile_path,
        machine=state_lines(start_state, records),
        search=_search_lines(sweep, run, specs, front, run.asked),
        front=[r.name for r in front],
        not_run=run.not_run,
        budget_minutes=conf.budget_minutes,
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
    console.print(
        console_table(records, selection, f"sweep {sweep.folder.sweep_id} ({conf.grid.name})")
    )
    console.print(f"report: {report}" + (f"\nprofile: {profile_path}" if profile_path else ""))
    return SweepOutcome(
        sweep.folder.root, records, selection, profile_path, report, sweep.parent_id, run.not_run
    )


def run_sweep(cfg: DictConfig | SweepConf, console: Console | None = None) -> SweepOutcome:
    """Run a whole sweep for a composed config (see ``harness.sweep.compose.build_config``).

    The sweep folder is locked first, before anything slow: a second sweep on a folder in use
    stops at once with ``LockBusy`` naming the PID of the sweep that holds it."""
    conf = cfg if isinstance(cfg, SweepConf) else OmegaConf.to_object(cfg)
    console = console or Console()
    fidelity_gates(conf.quality)  # fail on unknown gate names before any trial runs
    folder, lock = SweepFolder.open(conf.reports_dir, conf.sweep_id, conf.resume)
    with lock:
        return _run_locked(conf, folder, console)


def _run_locked(conf: SweepConf, folder: SweepFolder, console: Console) -> SweepOutcome:
    hw = check_hardware(conf)
    checkpoint = prepare_checkpoint(conf)
    reference = prepare_reference(conf.scenario)
    specs = build_trials(conf, hw, checkpoint.content_hash)
    start_state = survey(conf.hardware.device)
    warning = busy_warning(start_state, conf.isolation.max_other_cores)
    if warning:
        log.warning("%s", warning)
    sweep = open_sweep(conf, hw, checkpoint, folder)
    try:
        run = _trials(sweep, specs, reference, console)
        return conclude(sweep, specs, run, start_state, console)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the error that stopped the sweep is the one to show
            sweep.tracker.stop_parent(sweep.parent_id, exc)
        raise


def _trials(
    sweep: OpenSweep, specs: list[TrialSpec], reference: str | None, console: Console
) -> TrialsRun:
    conf = sweep.conf
    history = load_history(conf.reports_dir, conf.hardware.name, sweep.folder.sweep_id)
    plan = plan_trials(sweep, specs, history)
    log.info(
        "sweep %s: %d trials (%s, search=%s, launcher=%s%s) in %s",
        sweep.folder.sweep_id,
        plan.total,
        conf.grid.name,
        conf.search.name,
        conf.launcher.name,
        f", budget {conf.budget_minutes:g} min" if conf.budget_minutes else "",
        sweep.folder.root,
    )
    if conf.launcher.name == "ray":
        return run_trials_on_ray(sweep, order_by_promise(specs, history), reference, console)
    return run_trials(sweep, plan, history, reference, console)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="sweep comma lists of engine knobs"
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. grid=full-gpu scenario.repeats=3"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 when a profile was exported, 1 when nothing (not even the baseline) ran,
    2 for a bad configuration."""
    args = _parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the final table into 80 columns
        console = Console(width=200)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    try:
        cfg = build_config(args.overrides, args.multirun)
        if args.cfg:
            OmegaConf.to_object(cfg)  # validate, as a run would
            console.print(OmegaConf.to_yaml(cfg), markup=False, highlight=False)
            return 0
        return 0 if run_sweep(cfg, console).profile_path is not None else 1
    except (ValueError, FileNotFoundError) as exc:
        log.error("sweep: %s", exc)
        return 2
