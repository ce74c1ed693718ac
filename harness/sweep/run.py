"""The sweep: baseline first, then every candidate in its own process; MLflow, winner, report.

    python -m harness.sweep                                   # auto: quick-cpu or full-gpu
    python -m harness.sweep grid=full-gpu hardware=rtx4060 scenario.repeats=10
    python -m harness.sweep -m engine.quantization=none,int8 engine.chunk_size=8,32
    python -m harness.sweep resume=last                       # skip trials already finished

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
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome, conclude
from harness.sweep.config import SweepConf
from harness.sweep.grid import TrialSpec, build_trials
from harness.sweep.inputs import check_hardware, prepare_checkpoint, prepare_reference
from harness.sweep.loop import (
    OpenSweep,
    TrialsRun,
    open_sweep,
    plan_trials,
    run_trials,
    run_trials_on_ray,
)
from harness.sweep.machine import busy_warning, survey
from harness.sweep.plan import load_history, order_by_promise
from harness.sweep.selection import (
    fidelity_gates,
)
from harness.sweep.store import SweepFolder

log = logging.getLogger(__name__)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's command line, here and behind ``fishbench sweep``."""
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="sweep comma lists of engine knobs"
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
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
        return 0 if run_sweep(cfg, console).profile_path is not None else 1
    except (ValueError, FileNotFoundError) as exc:
        log.error("sweep: %s", exc)
        return 2
