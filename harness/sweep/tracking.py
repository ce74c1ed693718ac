"""MLflow logging: a parent run per sweep, a child run per trial, the winner tagged ``champion``.

Only the sweep's own process talks to MLflow (trials return plain dicts), through an explicit
``MlflowClient`` so nothing depends on MLflow's global active-run state. Figures a machine
cannot measure are left out rather than logged as numbers; the reason goes into a tag.

So that the MLflow UI opens where a benchmark user looks, the experiment is marked a model
training one, every trial adds a row to the parent's ``trials.json`` table, and each sweep saves
a named view of the runs table (its trials only, metric columns shown, sorted by p50 latency)
that ``runs_url`` links to.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from harness.sweep.config import LOCAL_TRACKING_URI, TrackingConf
from harness.trial.metrics import HEADLINE_METRICS
from harness.trial.record import FAILED, OK, TrialRecord

log = logging.getLogger(__name__)
MAX_TAG_CHARS = 4000
RUN_STATUS = {OK: "FINISHED", FAILED: "FAILED"}
# What MLflow's experiment kind selector writes; MLflow 3.17's UI follows ``workflowType`` instead.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
WORKFLOW = {"workflowType": "machine_learning"}  # the UI's "Model training" side, not GenAI
VIEW_TAG = "mlflow.sharedViewState."  # + key: a saved runs-table view, opened by ?viewStateShareKey
SORT_METRIC = HEADLINE_METRICS[0]
TRIALS_TABLE = "trials.json"
LOCAL_UI_URL = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"  # make mlflow-ui


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


def trial_row(record: TrialRecord, run_id: str) -> dict[str, Any]:
    """One row of the parent's trial table: identity, the figures compared, the knobs, the why."""
    knobs = record.active_knobs or record.knobs
    return {
        "trial": record.name,
        "status": record.status,
        "noisy": record.noisy,
        "kind": record.kind,
        "stage": record.stage,
        **{key: record.metric(key) for key in HEADLINE_METRICS},
        "wer": record.wer,
        **{f"knob.{key}": str(value) for key, value in knobs.items()},  # as the params are
        "reason": record.headline if record.reason else None,
        "config_hash": record.config_hash,
        "run_id": run_id,
    }


def _trials_query(parent_id: str) -> dict[str, Any]:
    """This sweep's trials as flat rows (their parent filtered out), fastest p50 first."""
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
        "orderByKey": f"metrics.`{SORT_METRIC}`",
        "orderByAsc": True,
    }


METRIC_COLUMNS = tuple(f"metrics.`{key}`" for key in (*HEADLINE_METRICS, "wer"))
CHAMPIONS_VIEW = "champions"  # the view key of every hardware's champion side by side


def _view(name: str, query: dict[str, Any], columns: list[str]) -> str:
    """A saved runs-table view in the envelope MLflow's UI writes: a query plus the columns to
    show (the UI shows no metric column until one is picked)."""
    state = {
        **query,
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",  # every run in the compare charts, not the first 10
    }
    now = _now_ms()
    return json.dumps(
        {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    )


def trials_view(parent_id: str, name: str) -> str:
    """One sweep's trials, fastest p50 first, the compared figures as columns."""
    columns = [*METRIC_COLUMNS, "tags.`status`", "tags.`noisy`", "tags.`champion`"]
    return _view(f"{name}: trials by p50 latency", _trials_query(parent_id), columns)


def champions_view() -> str:
    """Every hardware's champion side by side (``fishbench compare`` renders the same runs)."""
    query = {
        "searchFilter": "tags.champion = 'true'",
        "orderByKey": "tags.`hardware_id`",
        "orderByAsc": True,
    }
    columns = ["tags.`hardware_id`", *METRIC_COLUMNS, "tags.`gates`", "tags.`vram_mb`"]
    return _view("champions by hardware", query, columns)


def runs_url(base_url: str, conf: TrackingConf | None = None) -> str:
    """The MLflow UI page of the latest sweep's trials sorted by p50 latency (``make mlflow-ui``).

    A sweep logged before views were saved gets the same query in the URL, without the columns;
    no sweep yet gives the experiment's runs table, no experiment the UI's home page."""
    conf = conf or TrackingConf(tracking_uri=LOCAL_TRACKING_URI)
    client = MlflowClient(tracking_uri=conf.tracking_uri)
    experiment = client.get_experiment_by_name(conf.experiment)
    if experiment is None:
        return base_url
    query: dict[str, Any] = dict(WORKFLOW)
    latest = client.search_runs(
        [experiment.experiment_id],
        "tags.kind = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if latest:
        parent_id = latest[0].info.run_id
        if VIEW_TAG + parent_id in experiment.tags:
            query["viewStateShareKey"] = parent_id
        else:
            query.update(_trials_query(parent_id), orderByAsc="true")
    return f"{base_url}/#/experiments/{experiment.experiment_id}/runs?{urlencode(query)}"


def _artifact_location(conf: TrackingConf) -> str | None:
    """A local folder for a local store; a tracking server stores artifacts itself
    (``--serve-artifacts``), so other machines need no shared disk."""
    if conf.tracking_uri.startswith(("http://", "https://")):
        return None
    artifacts = Path(conf.artifact_root).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts.as_uri()


def champions_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of the champions view (saved when a champion is first marked)."""
    query = {**WORKFLOW, "viewStateShareKey": CHAMPIONS_VIEW}
    return f"{base_url}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


class SweepTracker:
    """Writes a sweep into one MLflow experiment of the configured store."""

    def __init__(self, conf: TrackingConf) -> None:
        # log_table re-reads the table it appends to: no download bars inside the sweep's progress
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.client = MlflowClient(tracking_uri=conf.tracking_uri)
        experiment = self.client.get_experiment_by_name(conf.experiment)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                conf.experiment,
                artifact_location=_artifact_location(conf),
                tags={KIND_TAG: MODEL_TRAINING},
            )
        else:
            self.experiment_id = experiment.experiment_id
            self.client.set_experiment_tag(self.experiment_id, KIND_TAG, MODEL_TRAINING)

    def start_parent(
        self, name: str, params: dict[str, Any], tags: dict[str, Any], run_id: str | None
    ) -> str:
        """The sweep's parent run: a new one, or ``run_id`` reopened when resuming."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"kind": "sweep"})
        run_id = run.info.run_id
        self.client.log_batch(
            run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=_tags(tags)
        )
        self.client.set_experiment_tag(
            self.experiment_id, VIEW_TAG + run_id, trials_view(run_id, name)
        )
        return run_id

    def log_trial(
        self, parent_id: str, record: TrialRecord, tags: dict[str, Any], folder: Path
    ) -> str:
        """A finished child run for ``record``: params, metrics, tags, its folder as artifacts;
        its row appended to the parent's trial table (a resumed sweep appends only new trials).

        Idempotent: a run already made for this very run of the trial (same parent, config hash
        and start) is returned as it is, or finished when a crash left it RUNNING; a trial run
        again (``retry_failed``) starts later and gets a run of its own."""
        start = int((record.started_at or time.time()) * 1000)
        earlier = self._trial_run(parent_id, record.config_hash, start)
        if earlier is not None and earlier.info.status != "RUNNING":
            log.info("trial %s is in MLflow already (run %s)", record.name, earlier.info.run_id)
            return earlier.info.run_id
        if earlier is None:
            run_id = self.client.create_run(
                self.experiment_id,
                start_time=start,
                run_name=record.name,
                tags={"mlflow.parentRunId": parent_id, "config_hash": record.config_hash},
            ).info.run_id
        else:
            run_id = earlier.info.run_id
            log.info("trial %s: finishing run %s, which a crash left RUNNING", record.name, run_id)
        self._fill_trial_run(run_id, record, tags, folder)
        if earlier is None or not self._in_table(parent_id, run_id):
            # object columns: pandas 3's str dtype makes log_table's image check warn every call
            row = pd.DataFrame([trial_row(record, run_id)], dtype=object)
            self.client.log_table(parent_id, row, TRIALS_TABLE)
        end = int((record.ended_at or time.time()) * 1000)
        self.client.set_terminated(run_id, RUN_STATUS.get(record.status, "FINISHED"), end_time=end)
        return run_id

    def _trial_run(self, parent_id: str, config_hash: str, start_ms: int) -> Run | None:
        """The child run of ``parent_id`` made for the trial ``config_hash`` started at
        ``start_ms``, if a call before this one made it."""
        query = f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.config_hash = '{config_hash}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query)
        return next((run for run in runs if run.info.start_time == start_ms), None)

    def _fill_trial_run(
        self, run_id: str, record: TrialRecord, tags: dict[str, Any], folder: Path
    ) -> None:
        knobs = record.active_knobs or record.knobs
        trial_tags = {
            **tags,
            "status": record.status,
            "noisy": str(bool(record.noisy)).lower(),
            "noisy_reason": record.noisy,
            "trial_kind": record.kind,
            "stage": record.stage,
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

    def _in_table(self, parent_id: str, run_id: str) -> bool:
        """Whether the parent's trial table has a row for ``run_id`` already."""
        if TRIALS_TABLE not in {a.path for a in self.client.list_artifacts(parent_id)}:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(parent_id, TRIALS_TABLE, tmp)
            table = pd.read_json(path, orient="split", dtype=False)
        return run_id in set(table.get("run_id", []))

    def stop_parent(self, parent_id: str, error: BaseException) -> None:
        """Close the parent run of a sweep that an error stopped (KILLED for Ctrl-C, else
        FAILED) rather than leave it RUNNING; resuming the sweep reopens it."""
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(parent_id, status)

    def mark_champion(self, run_id: str, parent_id: str, hardware_id: str) -> None:
        """Tag ``run_id`` champion of its hardware: an earlier champion on the same hardware (an
        older sweep, or this one before a resume) loses the tag and is told which run took it."""
        query = f"tags.hardware_id = '{hardware_id}' and tags.champion = 'true'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query):
            if run.info.run_id != run_id:
                self.client.delete_tag(run.info.run_id, "champion")
                self.client.set_tag(run.info.run_id, "champion_until", run_id)
        self.client.set_tag(run_id, "champion", "true")
        self.client.set_tag(parent_id, "champion_run_id", run_id)
        self.client.set_experiment_tag(
            self.experiment_id, VIEW_TAG + CHAMPIONS_VIEW, champions_view()
        )

    def tag_gates(self, records: list[TrialRecord], failures: dict[str, list[str]]) -> None:
        """Each measured candidate's gate verdict (``pass`` or the reasons) as its ``gates`` tag."""
        for record in records:
            if record.run_id is not None and not record.is_baseline and record.ok:
                verdict = "; ".join(failures.get(record.name, [])) or "pass"
                self.client.set_tag(record.run_id, "gates", verdict[:MAX_TAG_CHARS])

    def tag_screening(self, screens: list[TrialRecord], verdicts: dict[str, str]) -> None:
        """Each screening run's verdict (confirmed or not, and why) as its ``screening`` tag."""
        for record in screens:
            if record.run_id is not None and record.name in verdicts:
                self.client.set_tag(record.run_id, "screening", verdicts[record.name])

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
