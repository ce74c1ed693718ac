"""MLflow logging: a parent run per sweep, a child run per trial, the winner tagged ``champion``.

Only the sweep's own process talks to MLflow (trials return plain dicts), through an explicit
``MlflowClient`` so nothing depends on MLflow's global active-run state. Figures a machine
cannot measure are left out rather than logged as numbers; the reason goes into a tag.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.sweep_config import TrackingConf
from harness.trial_record import FAILED, OK, TrialRecord

MAX_TAG_CHARS = 4000
RUN_STATUS = {OK: "FINISHED", FAILED: "FAILED"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict[str, Any], prefix: str = "") -> list[Metric]:
    now = _now_ms()
    return [
        Metric(f"{prefix}{key}", float(value), now, 0)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ]


def _tags(values: dict[str, Any]) -> list[RunTag]:
    return [
        RunTag(key, str(value)[:MAX_TAG_CHARS])
        for key, value in values.items()
        if value is not None
    ]


def trial_metrics(record: TrialRecord) -> list[Metric]:
    """Speed, memory, compile, fidelity (``fidelity_*``) and WER figures of a trial."""
    metrics = _metrics(record.metrics) + _metrics(record.fidelity or {}, "fidelity_")
    return metrics + _metrics({"wer": record.wer})


class SweepTracker:
    """Writes a sweep into one MLflow experiment of the configured store."""

    def __init__(self, conf: TrackingConf) -> None:
        self.client = MlflowClient(tracking_uri=conf.tracking_uri)
        experiment = self.client.get_experiment_by_name(conf.experiment)
        if experiment is None:
            artifacts = Path(conf.artifact_root).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                conf.experiment, artifact_location=artifacts.as_uri()
            )
        else:
            self.experiment_id = experiment.experiment_id

    def start_parent(
        self, name: str, params: dict[str, Any], tags: dict[str, Any], run_id: str | None
    ) -> str:
        """The sweep's parent run: a new one, or ``run_id`` reopened when resuming."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"kind": "sweep"})
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=_tags(tags)
        )
        return run.info.run_id

    def log_trial(
        self, parent_id: str, record: TrialRecord, tags: dict[str, Any], folder: Path
    ) -> str:
        """A finished child run for ``record``: params, metrics, tags, its folder as artifacts."""
        start = int((record.started_at or time.time()) * 1000)
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            run_name=record.name,
            tags={"mlflow.parentRunId": parent_id},
        )
        run_id = run.info.run_id
        knobs = record.active_knobs or record.knobs
        trial_tags = {
            **tags,
            "status": record.status,
            "trial_kind": record.kind,
            "config_hash": record.config_hash,
            "reason": record.reason,
            "fallbacks": "; ".join(record.fallbacks) or None,
            **{f"{key}_status": note for key, note in record.notes.items()},
        }
        self.client.log_batch(
            run_id,
            metrics=trial_metrics(record),
            params=[Param(key, str(value)) for key, value in knobs.items()],
            tags=_tags(trial_tags),
        )
        if folder.is_dir():
            self.client.log_artifacts(run_id, str(folder))
        end = int((record.ended_at or time.time()) * 1000)
        self.client.set_terminated(run_id, RUN_STATUS.get(record.status, "FINISHED"), end_time=end)
        return run_id

    def mark_champion(self, run_id: str, parent_id: str) -> None:
        """Tag ``run_id`` champion, untagging an earlier champion of this sweep (after a resume)."""
        query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.champion = 'true'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query):
            self.client.delete_tag(run.info.run_id, "champion")
        self.client.set_tag(run_id, "champion", "true")
        self.client.set_tag(parent_id, "champion_run_id", run_id)

    def finish_parent(
        self, parent_id: str, metrics: dict[str, Any], tags: dict[str, Any], artifacts: list[Path]
    ) -> None:
        """Close the sweep's run with the winner's figures, report, plots and exported profile."""
        self.client.log_batch(parent_id, metrics=_metrics(metrics), tags=_tags(tags))
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(parent_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(parent_id, str(path))
        self.client.set_terminated(parent_id, "FINISHED")
