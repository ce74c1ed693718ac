"""Open a sweep (its folder and MLflow parent run) and run its trials: one after another as the
plan hands them out (``launcher=local``), or side by side as Ray tasks (``launcher=ray``). Each
finished trial is saved at once, then logged to MLflow, so an interrupted sweep resumes without
running a finished trial again or logging it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from engine.compile_cache import cache_folder, remember_built
from engine.model.checkpoint import CheckpointFolder
from engine.profile import Hardware
from harness.quality.wer import SYNTHETIC_NOTE
from harness.sweep.attempt import TrialContext, execute_trial
from harness.sweep.config import SweepConf
from harness.sweep.estimate import Estimator
from harness.sweep.grid import TrialSpec, base_knobs, config_hash, trial_inputs
from harness.sweep.machine import hardware_tags
from harness.sweep.plan import Budget, GridPlan, PastTrial, Plan, clock_text, order_by_promise
from harness.sweep.screen import ScreenedPlan, Verdict, screening_on
from harness.sweep.store import SweepFolder
from harness.trial.record import TrialRecord

if TYPE_CHECKING:
    from harness.sweep.tracking import SweepTracker

log = logging.getLogger(__name__)


class LeftColumn(ProgressColumn):
    """Time left: a task's expected seconds (``expected_s``) less its elapsed time, and the
    budget left (``budget_s``) where the task has one; rendered live as the trial runs."""

    def render(self, task: Task) -> Text:
        expected, elapsed = task.fields.get("expected_s"), task.elapsed or 0.0
        if expected is None:
            return Text("")
        left = expected - elapsed
        text = f"~{clock_text(left)} left" if left >= 0 else f"{clock_text(-left)} over estimate"
        budget = task.fields.get("budget_s")
        if budget is not None:
            text += f" (budget left {clock_text(budget - elapsed)})"
        return Text(text)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        LeftColumn(),
        console=console,
    )


@dataclass(frozen=True)
class OpenSweep:
    """A sweep whose folder and MLflow parent run exist: what its trials and its end share."""

    conf: SweepConf
    hw: Hardware
    checkpoint: CheckpointFolder
    folder: SweepFolder
    tracker: SweepTracker
    parent_id: str
    tags: dict[str, str]
    compile_cache: Path | None = None  # this machine's compile cache folder for the checkpoint


def _environment_tags(
    conf: SweepConf, hw: Hardware, checkpoint: CheckpointFolder
) -> dict[str, str]:
    tags = {
        **hardware_tags(hw),
        "checkpoint_hash": checkpoint.content_hash,
        "synthetic": str(checkpoint.is_synthetic).lower(),
        "hardware": conf.hardware.name,
    }
    if checkpoint.is_synthetic:
        tags["wer"] = SYNTHETIC_NOTE
    return tags


def open_sweep(
    conf: SweepConf, hw: Hardware, checkpoint: CheckpointFolder, folder: SweepFolder
) -> OpenSweep:
    """Create (or reopen, when resuming) the MLflow parent run of the sweep in ``folder`` (which
    this process has locked: ``SweepFolder.open``)."""
    from harness.sweep.tracking import SweepTracker

    state = folder.load_state()
    (folder.root / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf)))
    tags = _environment_tags(conf, hw, checkpoint)
    tracker = SweepTracker(conf.tracking)
    params = {
        "grid": conf.grid.name,
        "scenario": conf.scenario.name,
        "checkpoint": str(checkpoint.path),
        "objective": conf.quality.objective,
    }
    parent_id = tracker.start_parent(
        f"sweep-{folder.sweep_id}", params, tags, state.get("parent_run_id")
    )
    folder.save_state({**state, "sweep_id": folder.sweep_id, "parent_run_id": parent_id})
    cache = cache_folder(checkpoint.file("config.json"), hw.name)
    return OpenSweep(conf, hw, checkpoint, folder, tracker, parent_id, tags, cache)


@dataclass
class TrialsRun:
    """What the trial loop produced: the records, and what the budget left unrun."""

    records: list[TrialRecord]
    not_run: list[str]
    wall_s: list[float]
    asked: int  # candidates the plan handed out (Optuna may suggest one configuration twice)
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # screening, by screen name
    estimate: list[str] = field(default_factory=list)  # what the sweep expected, said up front


def make_plan(
    conf: SweepConf,
    hw: Hardware,
    specs: list[TrialSpec],
    history: dict[str, PastTrial],
    checkpoint: CheckpointFolder | None,
) -> Plan:
    """Optuna's suggestions, the screened grid or the whole grid, most promising first."""
    checkpoint_hash = checkpoint.content_hash if checkpoint else "no-checkpoint"
    if conf.search.name == "optuna":
        from harness.sweep.search import OptunaPlan
        from harness.sweep.vram import VramBound

        return OptunaPlan(
            conf,
            hw,
            specs[0],
            base_knobs(conf),
            trial_inputs(conf, checkpoint_hash),
            checkpoint is not None and not checkpoint.is_synthetic,
            VramBound.for_sweep(conf, checkpoint),
        )
    ordered = order_by_promise(specs, history)
    if screening_on(conf, sum(1 for spec in specs[1:] if spec.runs)):
        return ScreenedPlan(ordered, conf, checkpoint_hash)
    return GridPlan(ordered)


def plan_trials(sweep: OpenSweep, specs: list[TrialSpec], history: dict[str, PastTrial]) -> Plan:
    """``make_plan`` for an open sweep."""
    return make_plan(sweep.conf, sweep.hw, specs, history, sweep.checkpoint)


def _context(sweep: OpenSweep, reference: str | None) -> TrialContext:
    """What every trial shares, with absolute paths: a Ray worker starts in another folder."""
    folder = SweepFolder(sweep.folder.root.resolve())
    inputs = trial_inputs(sweep.conf, sweep.checkpoint.content_hash)
    return TrialContext(
        sweep.conf,
        folder,
        str(sweep.checkpoint.path.resolve()),
        str(Path(reference).resolve()) if reference else None,
        not sweep.checkpoint.is_synthetic,
        str(folder.fidelity_reference(config_hash("fidelity-reference", {}, inputs))),
    )


def _keep(sweep: OpenSweep, record: TrialRecord) -> None:
    """Save a trial that just finished, then log it to MLflow and save its run id.

    The record comes first so that a crash anywhere after it never runs the trial again, and
    ``log_trial`` finds a run it already made (by config hash and start): a resumed sweep logs
    a record without a run id (``_reconcile``) without a second MLflow run."""
    sweep.folder.save_record(record)
    trial_dir = sweep.folder.trial_dir(record.config_hash)
    record.run_id = sweep.tracker.log_trial(sweep.parent_id, record, sweep.tags, trial_dir)
    sweep.folder.save_record(record)


def _reconcile(sweep: OpenSweep, record: TrialRecord) -> None:
    """A finished trial of an earlier run of this sweep: log it now if that run stopped between
    saving its record and saving its MLflow run id."""
    log.info("resume: %s already finished (%s)", record.name, record.status)
    if record.run_id is None:
        log.info("resume: %s has no MLflow run id yet: logging it", record.name)
        _keep(sweep, record)


class _Bars:
    """The progress bar: the sweep's and the running trial's elapsed and expected time left."""

    def __init__(self, progress: Progress, total: int, budget: Budget) -> None:
        self.progress, self.budget = progress, budget
        self.sweep = progress.add_task("sweep", total=total, budget_s=budget.seconds)
        self.trial = progress.add_task("", total=None, visible=False)

    def start(
        self, spec: TrialSpec, number: int, total: int, predicted: float, queued: float
    ) -> None:
        elapsed = self.budget.elapsed()
        self.progress.update(self.sweep, total=total, expected_s=elapsed + predicted + queued)
        self.progress.reset(self.trial, total=None, visible=True, expected_s=predicted)
        self.progress.update(self.trial, description=f"trial {number}/{total}: {spec.name}")

    def finish(self, total: int) -> None:
        self.progress.update(self.sweep, total=total, advance=1)
        self.progress.update(self.trial, visible=False)


def _predicted(estimator: Estimator, spec: TrialSpec, plan: Plan) -> float:
    """``spec``'s expected time plus that of what the plan must still fit after it."""
    built = estimator.built | estimator.units(spec)
    return estimator.predict(spec) + sum(estimator.predict(r, built) for r in plan.reserve())


def _run_one(
    sweep: OpenSweep, ctx: TrialContext, spec: TrialSpec, estimator: Estimator
) -> TrialRecord:
    """Run a trial, save and log it, and let the estimate learn from it."""
    record = execute_trial(spec, ctx)
    _keep(sweep, record)
    estimator.ran(spec, record)
    units = {u for u in estimator.units(spec) if not u.startswith("upstream")}
    if record.ok and units and sweep.compile_cache is not None:
        remember_built(sweep.compile_cache, units)
    return record


def run_trials(
    sweep: OpenSweep,
    plan: Plan,
    estimator: Estimator,
    reference: str | None,
    console: Console,
) -> TrialsRun:
    """Run or resume the plan's trials, logging each to MLflow as soon as it finishes, until the
    plan or the time budget runs out."""
    ctx = _context(sweep, reference)
    finished = sweep.folder.finished(sweep.conf.retry_failed)
    budget = Budget(sweep.conf.effective_budget()[0])
    records: list[TrialRecord] = []
    not_run: list[str] = []
    with _progress(console) as progress:
        bars = _Bars(progress, plan.total, budget)
        while (spec := plan.next_spec()) is not None:
            if spec.config_hash in finished:
                record = finished[spec.config_hash]
                _reconcile(sweep, record)
                estimator.ran(spec, record)
            elif spec.runs and not budget.allows(
                _predicted(estimator, spec, plan), plan.essential(spec)
            ):
                dropped = plan.drop(spec)
                not_run += dropped
                log.warning(
                    "budget of %g min reached after %.1f min; not run: %s",
                    budget.seconds / 60,
                    budget.elapsed() / 60,
                    ", ".join(dropped),
                )
                continue
            else:
                queued = estimator.forecast(plan.upcoming(), None).total_s
                bars.start(spec, len(records) + 1, plan.total, estimator.predict(spec), queued)
                record = _run_one(sweep, ctx, spec, estimator)
                if spec.runs:
                    budget.ran(record.wall_s or 0.0)
            plan.done(record)
            records.append(record)
            bars.finish(plan.total)
    verdicts = plan.verdicts if isinstance(plan, ScreenedPlan) else {}
    return TrialsRun(records, not_run, budget.walls, plan.asked_count, verdicts)


def run_trials_on_ray(
    sweep: OpenSweep, specs: list[TrialSpec], reference: str | None, console: Console
) -> TrialsRun:
    """``launcher=ray``: the grid's trials as Ray tasks (``harness.launchers.ray``)."""
    from harness.launchers.ray import run_on_ray

    finished = sweep.folder.finished(sweep.conf.retry_failed)
    landed: dict[str, TrialRecord] = {}
    walls: list[float] = []
    with _progress(console) as progress:
        task = progress.add_task("Ray trials", total=len(specs))

        def done(spec: TrialSpec, record: TrialRecord) -> None:
            if spec.config_hash in finished:
                _reconcile(sweep, record)
            else:
                _keep(sweep, record)
                if spec.runs and record.started_at and record.ended_at:  # a lost task has none
                    walls.append(record.ended_at - record.started_at)
            landed[spec.config_hash] = record
            progress.update(task, advance=1, description=f"landed: {spec.name}")

        run_on_ray(_context(sweep, reference), specs, finished, done, console)
    records = [landed[spec.config_hash] for spec in specs]
    return TrialsRun(records, [], walls, len(specs) - 1)
