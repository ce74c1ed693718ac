"""Turn one trial spec into a finished record: run it in a child, add WER, write its artifacts.

The trial folder ends up with ``config.yaml`` (the resolved trial config), ``trial.log``,
``sample.wav``, ``timings.json`` (raw per-repeat reports), ``profile.yaml`` (candidates) and
``error.txt`` (failures): the files MLflow stores as the child run's artifacts.

A trial whose timings other processes disturbed (NOISY, see ``harness.trial.isolation``) runs
again after a pause; if it is still NOISY it is kept, marked, and (unless
``selection.allow_noisy``) kept from winning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.profile import EngineProfile
from harness.launchers.local import reclaim, run_in_child
from harness.quality.wer import measure_wer
from harness.sweep.config import IsolationConf, SweepConf
from harness.sweep.grid import TrialSpec
from harness.sweep.screen import screen_scenario
from harness.sweep.store import SweepFolder
from harness.trial.isolation import disturbance
from harness.trial.measure import run_trial
from harness.trial.record import CANDIDATE, FAILED, OK, SCREEN, TrialRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares."""

    conf: SweepConf
    folder: SweepFolder
    checkpoint: str
    reference_audio: str | None
    wer_applicable: bool
    fidelity_reference: str  # where the sweep's fp32 reference run is kept for every candidate


def trial_job(spec: TrialSpec, ctx: TrialContext) -> dict[str, Any]:
    """The plain dict the child process receives (also saved as the trial's config.yaml).

    A screening spec gets the short screening scenario and no fidelity run."""
    screening = spec.stage == SCREEN
    scenario = screen_scenario(ctx.conf) if screening else ctx.conf.scenario
    return {
        "name": spec.name,
        "kind": spec.kind,
        "knobs": spec.knobs,
        "checkpoint": ctx.checkpoint,
        "reference_audio": ctx.reference_audio,
        "scenario": dataclasses.asdict(scenario),
        "fidelity": not screening,
        "hardware": ctx.conf.hardware.name,
        "bandwidth_gb_s": ctx.conf.hardware.bandwidth_gb_s,
        "out_dir": str(ctx.folder.trial_dir(spec.config_hash)),
        "fidelity_reference": ctx.fidelity_reference,
    }


def _fill(record: TrialRecord, result: dict[str, Any], limits: IsolationConf) -> None:
    record.status = OK
    record.metrics = result["metrics"]
    record.runs = result["runs"]
    record.active_knobs = result["active_knobs"]
    record.fallbacks = result["fallbacks"]
    record.fidelity = result["fidelity"]
    record.isolation = result["isolation"]
    record.noisy = disturbance(
        result["isolation"], limits.max_other_cores, limits.max_other_gpu_pct
    )
    record.notes["repeats"] = result["repeats_stop"]
    if result["fidelity_note"]:
        record.notes["fidelity"] = result["fidelity_note"]


def _add_wer(record: TrialRecord, ctx: TrialContext, out_dir: Path) -> None:
    if not ctx.wer_applicable or record.screened:  # the sweep's ``wer`` tag, or the stage, says why
        return
    try:
        scored = measure_wer(
            out_dir / "sample.wav",
            ctx.conf.scenario.text,
            ctx.conf.quality.asr,
            out_dir / "asr.log",
        )
    except RuntimeError as exc:  # the whole error is in asr.log
        record.notes["wer"] = str(exc).splitlines()[0]
        return
    record.wer, record.transcript = scored["wer"], scored["text"]


def _write_artifacts(record: TrialRecord, out_dir: Path) -> None:
    if record.runs:
        (out_dir / "timings.json").write_text(json.dumps(record.runs, indent=2))
    if record.kind == CANDIDATE and record.status != FAILED:
        EngineProfile.model_validate(record.active_knobs or record.knobs).save(
            out_dir / "profile.yaml"
        )
    if record.status == FAILED and record.reason:
        (out_dir / "error.txt").write_text(record.reason)


def _fresh_folder(spec: TrialSpec, ctx: TrialContext) -> Path:
    """The trial's folder, emptied of what an earlier attempt left (a killed sweep's, or a
    FAILED trial's being retried) once no child of that attempt can still write there."""
    out_dir = ctx.folder.trial_dir(spec.config_hash)
    reclaim(ctx.folder.trial_lock(spec.config_hash))
    if out_dir.is_dir():
        log.info("trial %s: clearing what an earlier attempt left in %s", spec.name, out_dir)
        shutil.rmtree(out_dir)
    return out_dir


def execute_trial(spec: TrialSpec, ctx: TrialContext) -> TrialRecord:
    """Run ``spec`` (or record why it does not run); never raises for the trial's own failures."""
    out_dir = _fresh_folder(spec, ctx)
    job = trial_job(spec, ctx)
    ctx.folder.save_trial_config(spec.config_hash, job)
    started = time.time()
    if spec.status is not None:
        record = spec.record()
        record.status = spec.status
    else:
        record = _measure(spec, ctx, job, out_dir)
        for _ in range(ctx.conf.isolation.retries):
            if not (record.ok and record.noisy):
                break
            wait = ctx.conf.isolation.retry_wait_s
            log.warning("trial %s NOISY (%s): again in %.0f s", spec.name, record.noisy, wait)
            time.sleep(wait)
            first = record.noisy
            record = _measure(spec, ctx, job, out_dir)
            record.notes["isolation"] = f"re-run after NOISY: {first}"
        if record.noisy:
            log.warning("trial %s still NOISY: %s", spec.name, record.noisy)
        if record.ok:
            _add_wer(record, ctx, out_dir)
    record.started_at, record.ended_at = started, time.time()
    _write_artifacts(record, out_dir)
    return record


def _measure(spec: TrialSpec, ctx: TrialContext, job: dict[str, Any], out_dir: Path) -> TrialRecord:
    """One run of the trial's child process, as a record (FAILED with the child's reason)."""
    record = spec.record()
    outcome = run_in_child(
        run_trial,
        job,
        ctx.conf.trial_timeout_s,
        out_dir / "trial.log",
        ctx.folder.trial_lock(spec.config_hash),
    )
    if outcome.result is None:
        record.reason = outcome.error
        log.warning("trial %s FAILED: %s", spec.name, record.headline)
    else:
        _fill(record, outcome.result, ctx.conf.isolation)
    return record
