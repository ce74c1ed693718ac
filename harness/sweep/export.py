"""Export the winner as the active engine profile, with where it came from.

Written twice: ``reports/profiles/<hardware>-<timestamp>.yaml`` (history) and
``reports/profile.yaml`` (what the service loads), under ``profiles/.export.lock`` so that two
sweeps finishing together (on different folders) export one after the other, never interleaved.
When the baseline wins, the exported profile is the engine's safe default (eager, unquantized),
the engine configuration closest to upstream, carrying the baseline's figures.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import torch

from engine.model.checkpoint import CheckpointFolder
from engine.paths import ACTIVE_PROFILE
from engine.profile import EngineProfile, Hardware, Provenance, resolve_profile
from harness.sweep.lock import FileLock
from harness.trial.metrics import HEADLINE_METRICS
from harness.trial.record import TrialRecord

log = logging.getLogger(__name__)
EXPORT_LOCK = ".export.lock"  # in reports/profiles/
EXPORT_WAIT_S = 300.0  # another sweep's export takes well under a second


def winning_profile(winner: TrialRecord, hw: Hardware) -> EngineProfile:
    if winner.is_baseline:
        return resolve_profile(EngineProfile(device=hw.device), hw)[0]
    return EngineProfile.model_validate(winner.active_knobs or winner.knobs)


def export_profile(
    winner: TrialRecord,
    hw: Hardware,
    hardware_name: str,
    checkpoint: CheckpointFolder,
    speedup: float | None,
    reports_dir: Path,
    stamp: str,
    objective: Literal["latency", "throughput"],
) -> tuple[Path, Path]:
    """Write the timestamped and the active profile; returns both paths. ``objective`` is the
    one the winner won under (a throughput profile batches requests; the service says which)."""
    figures = {key: winner.metric(key) for key in HEADLINE_METRICS}
    figures.update({f"fidelity_{key}": value for key, value in (winner.fidelity or {}).items()})
    figures.update(speedup_vs_baseline=speedup, wer=winner.wer)
    provenance = Provenance(
        gpu_name=hw.name,
        compute_capability=hw.capability_str,
        torch_version=torch.__version__,
        checkpoint_hash=checkpoint.content_hash,
        checkpoint_dir=str(checkpoint.path),
        mlflow_run_id=winner.run_id,
        hardware=hardware_name,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        metrics={key: value for key, value in figures.items() if value is not None},
        objective=objective,
    )
    profile = winning_profile(winner, hw).model_copy(update={"provenance": provenance})
    profiles = reports_dir / "profiles"
    with FileLock.take(
        profiles / EXPORT_LOCK, f"the profile export in {reports_dir}", EXPORT_WAIT_S
    ):
        dated = profile.save(profiles / f"{hardware_name}-{stamp}.yaml")
        active = reports_dir / ACTIVE_PROFILE.name
        staged = profiles / f".active-{os.getpid()}.yaml"
        shutil.copyfile(dated, staged)
        staged.replace(active)  # the service never reads a half-written profile
    log.info("exported %s profile to %s and %s", winner.name, dated, active)
    return dated, active
