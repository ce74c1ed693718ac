"""A sweep's folder, ``reports/sweeps/<sweep id>/``: its state, and one folder per trial.

Each trial folder holds the resolved trial config, the child's log, the sample WAV and
``record.json``; a record there means the trial finished, which is what resume relies on. Beside
them, ``fidelity-reference-<hash>.pt`` keeps the fp32 run the candidates' fidelity is measured
against (one per scenario, weights and hardware).

Locks (``harness.sweep.lock``): ``sweep.lock``, held by the one sweep writing the folder (a second
is refused with the holder's PID), and ``trials/<hash>.lock``, held by a trial's child while it
runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError
from harness.sweep.lock import FileLock
from harness.trial.record import FAILED, TrialRecord

RECORD = "record.json"
STATE = "sweep.json"
LOCK = "sweep.lock"  # held by the sweep writing the folder (harness.sweep.lock)


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _resumed_root(sweeps: Path, resume: str) -> Path:
    """The folder ``resume`` names: "last" (the newest sweep under ``sweeps``) or a sweep id."""
    if resume == "last":
        existing = (
            sorted(p for p in sweeps.glob("*") if (p / STATE).is_file()) if sweeps.is_dir() else []
        )
        if not existing:
            raise ConfigError(f"resume=last: no sweep under {sweeps} to resume")
        return existing[-1]
    if not (sweeps / resume / STATE).is_file():
        raise ConfigError(f"resume={resume}: {sweeps / resume} is not a sweep folder")
    return sweeps / resume


@dataclass(frozen=True)
class SweepFolder:
    root: Path

    @property
    def sweep_id(self) -> str:
        return self.root.name

    @classmethod
    def open(
        cls, reports_dir: str | Path, sweep_id: str | None, resume: str | None
    ) -> tuple[SweepFolder, FileLock]:
        """The folder to write, a resumed one (``resume`` = "last" or an id) or a new one, and
        the lock that keeps every other sweep out of it until released (``LockBusy`` names the
        sweep that holds it)."""
        root = _resumed_root(Path(reports_dir) / "sweeps", resume) if resume else None
        if root is None:
            root = Path(reports_dir) / "sweeps" / (sweep_id or new_sweep_id())
            root.mkdir(parents=True, exist_ok=True)
        lock = FileLock.take(
            root / LOCK, f"sweep folder {root}", hint=": wait for that sweep or stop it"
        )
        if not resume and (root / STATE).exists():
            lock.release()
            raise ConfigError(
                f"{root} already holds a sweep; pass resume={root.name} to continue it"
            )
        return cls(root), lock

    def trial_dir(self, config_hash: str) -> Path:
        return self.root / "trials" / config_hash

    def trial_lock(self, config_hash: str) -> Path:
        """Held by the trial's child while it runs (beside its folder: not one of its artifacts)."""
        return self.root / "trials" / f"{config_hash}.lock"

    def fidelity_reference(self, inputs_hash: str) -> Path:
        """The fp32 reference run every candidate on these inputs is compared against."""
        return self.root / f"fidelity-reference-{inputs_hash}.pt"

    def finished(self, retry_failed: bool = False) -> dict[str, TrialRecord]:
        """Records of trials that already finished here, by config hash."""
        records = {}
        for path in self.root.glob(f"trials/*/{RECORD}"):
            record = TrialRecord.load(path)
            if not (retry_failed and record.status == FAILED):
                records[record.config_hash] = record
        return records

    def save_record(self, record: TrialRecord) -> Path:
        return record.save(self.trial_dir(record.config_hash) / RECORD)

    def save_trial_config(self, config_hash: str, config: dict[str, Any]) -> Path:
        path = self.trial_dir(config_hash) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def load_state(self) -> dict[str, Any]:
        path = self.root / STATE
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_state(self, state: dict[str, Any]) -> None:
        (self.root / STATE).write_text(json.dumps(state, indent=2, default=str))
