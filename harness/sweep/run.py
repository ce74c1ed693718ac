"""The sweep: baseline first, then every candidate in its own process; MLflow, winner, report.

    python -m harness.sweep                                   # auto: quick-cpu or full-gpu
    python -m harness.sweep grid=full-gpu hardware=rtx4060 scenario.repeats=10
    python -m harness.sweep -m engine.quantization=none,int8 engine.chunk_size=8,32
    python -m harness.sweep resume=last                       # skip trials already finished
    python -m harness.sweep --plan grid=full-gpu hardware=rtx4060   # the estimate, nothing run

``run_sweep(cfg)`` locks the sweep folder (one sweep per folder: a second is refused, naming the
first's PID), opens the sweep and runs its trials (``harness.sweep.loop``), then concludes
(``harness.sweep.conclude``: select, export, report); ``main(argv)`` is the command line (also
behind ``fishbench sweep``).
Without a real checkpoint in ``checkpoint`` the tiny synthetic one is made (once) in
``synthetic_checkpoint`` and the CPU grid runs.

MLflow is imported only when a sweep opens: under ``python -m harness.sweep`` every spawned trial
re-imports this module as its ``__main__``, and MLflow alone would add ~6 s to each trial's start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from engine.compile_cache import built_graphs, cache_folder
from engine.model.checkpoint import CheckpointFolder
from engine.profile import Hardware
from harness.reports import markdown_table
from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome, conclude
from harness.sweep.config import HardwareConf, SweepConf
from harness.sweep.estimate import Estimator, TrialTimes, estimate_lines
from harness.sweep.grid import TrialSpec, build_trials
from harness.sweep.inputs import check_hardware, prepare_checkpoint, prepare_reference
from harness.sweep.loop import (
    OpenSweep,
    TrialsRun,
    make_plan,
    open_sweep,
    plan_trials,
    run_trials,
    run_trials_on_ray,
)
from harness.sweep.machine import busy_warning, survey
from harness.sweep.plan import (
    Budget,
    Plan,
    clock_text,
    load_history,
    order_by_promise,
    past_records,
)
from harness.sweep.screen import screen_scenario
from harness.sweep.selection import fidelity_gates
from harness.sweep.store import SweepFolder
from harness.sweep.vram import VramBound

log = logging.getLogger(__name__)


def run_sweep(
    cfg: DictConfig | SweepConf, console: Console | None = None, rerun: str | None = None
) -> SweepOutcome:
    """Run a whole sweep for a composed config (see ``harness.sweep.compose.build_config``).

    ``rerun`` is the command line that resumes this sweep with no budget, ``{id}`` standing for
    its id (default: ``fishbench sweep budget_minutes=inf resume={id}``). The sweep folder is
    locked first, before anything slow: a second sweep on a folder in use stops at once with
    ``LockBusy`` naming the PID of the sweep that holds it."""
    conf = cfg if isinstance(cfg, SweepConf) else OmegaConf.to_object(cfg)
    console = console or Console()
    fidelity_gates(conf.quality)  # fail on unknown gate names before any trial runs
    folder, lock = SweepFolder.open(conf.reports_dir, conf.sweep_id, conf.resume)
    rerun = (rerun or rerun_command([])).replace("{id}", folder.sweep_id)
    with lock:
        return _run_locked(conf, folder, console, rerun)


def rerun_command(overrides: Sequence[str], multirun: bool = False, resume: bool = True) -> str:
    """The command that runs a sweep with these overrides and no budget: resuming the sweep
    ``{id}`` (filled in by ``run_sweep``), or a new one."""
    dropped = ("resume", "budget_minutes", "sweep_id")
    kept = [o for o in overrides if o.split("=")[0].lstrip("+~") not in dropped]
    words = ["fishbench", "sweep", *(["-m"] if multirun else []), *kept]
    return shlex.join(words + ["budget_minutes=inf"]) + (" resume={id}" if resume else "")


def _run_locked(conf: SweepConf, folder: SweepFolder, console: Console, rerun: str) -> SweepOutcome:
    hw = check_hardware(conf)
    checkpoint = prepare_checkpoint(conf)
    reference = prepare_reference(conf.scenario)
    specs = build_trials(conf, hw, checkpoint.content_hash, VramBound.for_sweep(conf, checkpoint))
    start_state = survey(conf.hardware.device)
    warning = busy_warning(start_state, conf.isolation.max_other_cores)
    if warning:
        log.warning("%s", warning)
    sweep = open_sweep(conf, hw, checkpoint, folder)
    try:
        run = _trials(sweep, specs, reference, console, rerun)
        return conclude(sweep, specs, run, start_state, console, rerun)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the error that stopped the sweep is the one to show
            sweep.tracker.stop_parent(sweep.parent_id, exc)
        raise


def build_estimator(
    conf: SweepConf, hw: Hardware, checkpoint: CheckpointFolder | None, sweep_id: str
) -> Estimator:
    """What the estimate learns from: earlier sweeps on this preset and this machine's compile
    cache for ``checkpoint`` (None: no checkpoint here, so nothing is cached)."""
    times = TrialTimes.from_history(
        conf.hardware.times,
        conf.hardware.name,
        past_records(conf.reports_dir, conf.hardware.name, sweep_id),
    )
    built, limit = set(), None
    if checkpoint is not None:
        built = built_graphs(cache_folder(checkpoint.file("config.json"), hw.name))
        limit = checkpoint.config.get("max_seq_len")
    frames = screen_scenario(conf).fixed_frames
    return Estimator(times, hw, conf.scenario.fixed_frames, frames, built, limit)


def announce(
    conf: SweepConf,
    plan: Plan,
    estimator: Estimator,
    rerun: str | None,
    finished: Collection[str] = (),
) -> list[str]:
    """Log the estimate before the first trial (trials ``finished`` by config hash, resumed, are
    left out of it); returns its lines (the report repeats them)."""
    budget, _ = conf.effective_budget()
    upcoming = [spec for spec in plan.upcoming() if spec.config_hash not in finished]
    forecast = estimator.forecast(
        upcoming, None if budget is None else budget * 60, Budget.ALWAYS_RUN
    )
    lines = estimate_lines(conf, estimator, forecast, rerun)
    for line in lines:
        log.info("%s", line)
    return lines


def _trials(
    sweep: OpenSweep, specs: list[TrialSpec], reference: str | None, console: Console, rerun: str
) -> TrialsRun:
    conf = sweep.conf
    history = load_history(conf.reports_dir, conf.hardware.name, sweep.folder.sweep_id)
    plan = plan_trials(sweep, specs, history)
    budget, source = conf.effective_budget()
    log.info(
        "sweep %s: %d trials (%s, search=%s, launcher=%s%s) in %s",
        sweep.folder.sweep_id,
        plan.total,
        conf.grid.name,
        conf.search.name,
        conf.launcher.name,
        f", budget {budget:g} min ({source})" if budget else "",
        sweep.folder.root,
    )
    estimator = build_estimator(conf, sweep.hw, sweep.checkpoint, sweep.folder.sweep_id)
    finished = sweep.folder.finished(conf.retry_failed)
    estimate = announce(conf, plan, estimator, rerun, finished)
    if conf.launcher.name == "ray":
        run = run_trials_on_ray(sweep, order_by_promise(specs, history), reference, console)
    else:
        run = run_trials(sweep, plan, estimator, reference, console)
    run.estimate = estimate
    return run


def planning_hardware(conf: HardwareConf) -> Hardware:
    """This machine, or, for a GPU preset on a machine without that GPU, the preset's GPU as
    ``--plan`` assumes it (its compute capability; bitsandbytes' kernels working)."""
    import torch

    if conf.device == "cpu" or torch.cuda.is_available():
        return Hardware.detect(conf.device, probe_bitsandbytes=conf.device == "cuda")
    capability = conf.compute_capability or "8.0"
    major, minor = (int(part) for part in capability.split("."))
    name = conf.match[0] if conf.match else conf.name
    return Hardware("cuda", name, (major, minor), True)


def plan_only(conf: SweepConf, console: Console, rerun: str | None = None) -> list[str]:
    """``--plan``: the trials in order with their compile and time, and the estimate; nothing
    runs, and no GPU is needed."""
    hw = planning_hardware(conf.hardware)
    path = next((p for p in (conf.checkpoint, conf.synthetic_checkpoint) if Path(p).is_dir()), None)
    checkpoint = CheckpointFolder.open(path) if path else None
    digest = checkpoint.content_hash if checkpoint else "no-checkpoint"
    specs = build_trials(conf, hw, digest, VramBound.for_sweep(conf, checkpoint))
    history = load_history(conf.reports_dir, conf.hardware.name, "")
    plan = make_plan(conf, hw, specs, history, checkpoint)
    estimator = build_estimator(conf, hw, checkpoint, "")
    forecast = estimator.forecast(plan.upcoming(), None)
    rows = [
        [spec.name, spec.stage or "", spec.status or kind, clock_text(seconds)]
        for spec, kind, seconds in forecast.rows
    ]
    console.print(
        "\n".join(markdown_table(("trial", "stage", "compile", "expected"), rows)),
        markup=False,
        highlight=False,
    )
    return announce(conf, plan, estimator, rerun)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's command line, here and behind ``fishbench sweep``."""
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="sweep comma lists of engine knobs"
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the trials, their compiles and the time estimate, and exit (no GPU needed)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. grid=full-gpu scenario.repeats=3"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.sweep``; see ``run``."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Command line: 0 when a profile was exported, 1 when nothing (not even the baseline) ran,
    2 for a bad configuration."""
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
        if getattr(args, "plan", False):
            rerun = rerun_command(args.overrides, args.multirun, resume=False)
            plan_only(OmegaConf.to_object(cfg), console, rerun)
            return 0
        rerun = rerun_command(args.overrides, args.multirun)
        return 0 if run_sweep(cfg, console, rerun).profile_path is not None else 1
    except (ValueError, FileNotFoundError) as exc:
        log.error("sweep: %s", exc)
        return 2
