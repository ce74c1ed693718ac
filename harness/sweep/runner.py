"""The sweep: baseline first, then every candidate in its own process; MLflow, winner, report.

    python -m harness.sweep                                   # auto: quick-cpu or full-gpu
    python -m harness.sweep grid=full-gpu hardware=rtx4060 scenario.repeats=10
    python -m harness.sweep -m engine.quantization=none,int8 engine.chunk_size=8,32
    python -m harness.sweep resume=last                       # skip trials already finished

``run_sweep(cfg)`` does the work for a composed config; ``main(argv)`` is the command line (also
behind ``fishbench sweep``). Without a real checkpoint in ``checkpoint`` the tiny synthetic one
is made (once) in ``synthetic_checkpoint`` and the CPU grid runs.

MLflow is imported only when a sweep opens: under ``python -m harness.sweep`` every spawned trial
re-imports this module as its ``__main__``, and MLflow alone would add ~6 s to each trial's start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from engine.checkpoint import CheckpointFolder
from engine.profile import Hardware
from harness.quality.wer import SYNTHETIC_NOTE
from harness.sweep.compose import build_config
from harness.sweep.config import SweepConf
from harness.sweep.export import export_profile
from harness.sweep.grid import TrialSpec, build_trials
from harness.sweep.inputs import check_hardware, prepare_checkpoint, prepare_reference
from harness.sweep.report import SweepContext, console_table, speedup, write_report
from harness.sweep.selection import Selection, fidelity_gates, select_winner
from harness.sweep.store import SweepFolder
from harness.sweep.trials import TrialContext, execute_trial
from harness.trial.record import TrialRecord

if TYPE_CHECKING:
    from harness.sweep.tracking import SweepTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    folder: Path
    records: list[TrialRecord]
    selection: Selection
    profile_path: Path | None
    report_path: Path
    parent_run_id: str


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
    )


def _eta(walls: list[float], to_run: int) -> str:
    """Mean wall time of the trials run so far times the trials still to run."""
    if not walls:
        return "?"
    return str(dt.timedelta(seconds=round(sum(walls) / len(walls) * to_run)))


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


def _environment_tags(
    conf: SweepConf, hw: Hardware, checkpoint: CheckpointFolder
) -> dict[str, str]:
    tags = {
        "gpu_name": hw.name,
        "compute_capability": hw.capability_str or "n/a",
        "torch_version": torch.__version__,
        "checkpoint_hash": checkpoint.content_hash,
        "synthetic": str(checkpoint.is_synthetic).lower(),
        "hardware": conf.hardware.name,
    }
    if hw.device == "cpu":
        tags["vram"] = "n/a on CPU: memory figures are host RSS; GPU utilization and energy n/a"
    if checkpoint.is_synthetic:
        tags["wer"] = SYNTHETIC_NOTE
    return tags


def open_sweep(conf: SweepConf, hw: Hardware, checkpoint: CheckpointFolder) -> OpenSweep:
    """Create (or reopen, when resuming) the sweep folder and its MLflow parent run."""
    from harness.sweep.tracking import SweepTracker

    folder = SweepFolder.open(conf.reports_dir, conf.sweep_id, conf.resume)
    state = folder.load_state()
    (folder.root / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf)))
    tags = _environment_tags(conf, hw, checkpoint)
    tracker = SweepTracker(conf.tracking)
    params = {
        "grid": conf.grid.name,
        "scenario": conf.scenario.name,
        "checkpoint": str(checkpoint.path),
    }
    parent_id = tracker.start_parent(
        f"sweep-{folder.sweep_id}", params, tags, state.get("parent_run_id")
    )
    folder.save_state({**state, "sweep_id": folder.sweep_id, "parent_run_id": parent_id})
    return OpenSweep(conf, hw, checkpoint, folder, tracker, parent_id, tags)


def run_trials(
    sweep: OpenSweep, specs: Sequence[TrialSpec], reference: str | None, console: Console
) -> list[TrialRecord]:
    """Run or resume every trial in order, logging each to MLflow as soon as it finishes."""
    ctx = TrialContext(
        sweep.conf,
        sweep.folder,
        str(sweep.checkpoint.path),
        reference,
        not sweep.checkpoint.is_synthetic,
    )
    finished = sweep.folder.finished(sweep.conf.retry_failed)
    to_run = sum(1 for s in specs if s.status is None and s.config_hash not in finished)
    records, walls = [], []
    with _progress(console) as progress:
        task = progress.add_task("", total=len(specs), eta="?")
        for i, spec in enumerate(specs, 1):
            progress.update(task, description=f"trial {i}/{len(specs)}: {spec.name}")
            if spec.config_hash in finished:
                log.info(
                    "resume: %s already finished (%s)", spec.name, finished[spec.config_hash].status
                )
                records.append(finished[spec.config_hash])
                progress.advance(task)
                continue
            record = execute_trial(spec, ctx)
            if spec.status is None:
                walls.append(record.ended_at - record.started_at)
                to_run -= 1
            trial_dir = sweep.folder.trial_dir(spec.config_hash)
            record.run_id = sweep.tracker.log_trial(sweep.parent_id, record, sweep.tags, trial_dir)
            sweep.folder.save_record(record)
            records.append(record)
            progress.update(task, advance=1, eta=_eta(walls, to_run))
    return records


def conclude(sweep: OpenSweep, records: list[TrialRecord], console: Console) -> SweepOutcome:
    """Select and export the winner, tag it champion, write the report, print the table."""
    conf, checkpoint = sweep.conf, sweep.checkpoint
    wer_applicable = not checkpoint.is_synthetic
    selection = select_winner(records, conf.quality, conf.hardware.vram_budget_mb, wer_applicable)
    baseline = next((r for r in records if r.is_baseline), None)
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
        sweep.tracker.mark_champion(selection.winner.run_id, sweep.parent_id)
        winner_metrics = {**selection.winner.metrics, "speedup_vs_baseline": ratio}
        artifacts.append(dated)
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
        scenario=f"{scenario.name} ({scenario.fixed_frames} frames, {scenario.repeats} repeats)",
        wer_note=sweep.tags.get("wer"),
        profile_path=profile_path,
    )
    report = write_report(sweep.folder.root, records, selection, context)
    artifacts += [
        report,
        sweep.folder.root / "latency_vs_memory.png",
        sweep.folder.root / "stages.png",
    ]
    sweep.tracker.finish_parent(
        sweep.parent_id, winner_metrics, {"winner": selection.summary}, artifacts
    )
    console.print(
        console_table(records, selection, f"sweep {sweep.folder.sweep_id} ({conf.grid.name})")
    )
    console.print(f"report: {report}" + (f"\nprofile: {profile_path}" if profile_path else ""))
    return SweepOutcome(
        sweep.folder.root, records, selection, profile_path, report, sweep.parent_id
    )


def run_sweep(cfg: DictConfig | SweepConf, console: Console | None = None) -> SweepOutcome:
    """Run a whole sweep for a composed config (see ``harness.sweep.compose.build_config``)."""
    conf = cfg if isinstance(cfg, SweepConf) else OmegaConf.to_object(cfg)
    console = console or Console()
    fidelity_gates(conf.quality)  # fail on unknown gate names before any trial runs
    hw = check_hardware(conf)
    checkpoint = prepare_checkpoint(conf)
    reference = prepare_reference(conf.scenario)
    specs = build_trials(conf, hw, checkpoint.content_hash)
    sweep = open_sweep(conf, hw, checkpoint)
    log.info(
        "sweep %s: %d trials (%s) in %s",
        sweep.folder.sweep_id,
        len(specs),
        conf.grid.name,
        sweep.folder.root,
    )
    return conclude(sweep, run_trials(sweep, specs, reference, console), console)


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
