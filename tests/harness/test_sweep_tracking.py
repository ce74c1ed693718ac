"""Where MLflow opens for a sweep, on a real temporary sqlite store through the tracking API: the
experiment is a model-training one, the parent run holds the trial table, report and plots, and
``runs_url`` links to a saved view of the latest sweep's trials sorted by p50 latency."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow.tracking import MlflowClient

from harness.sweep.config import QualityConf, TrackingConf
from harness.sweep.report import SweepContext, write_report
from harness.sweep.selection import Gates, select_winner
from harness.sweep.tracking import (
    KIND_TAG,
    MODEL_TRAINING,
    TRIALS_TABLE,
    VIEW_TAG,
    SweepTracker,
    runs_url,
)
from harness.trial.record import BASELINE, CANDIDATE, FAILED, OK, TrialRecord

pytestmark = pytest.mark.slow  # a fresh sqlite store runs MLflow's migrations (a few seconds)

BASE = "http://127.0.0.1:5000"


def _record(name: str, kind: str, p50: float | None, status: str = OK) -> TrialRecord:
    metrics = {} if p50 is None else {"latency_p50_s": p50, "frames_per_s": 24 / p50}
    return TrialRecord(
        name=name,
        kind=kind,
        config_hash=f"hash-{name}",
        knobs={"compile": name != "baseline", "quantization": "none"},
        status=status,
        reason=None if status == OK else "RuntimeError: prompt overflows max_seq_len\ntraceback",
        metrics={**metrics, "host_rss_mb": 900.0} if metrics else {},
    )


TRIALS = [
    _record("baseline", BASELINE, 2.0),
    _record("compile=true", CANDIDATE, 0.5),
    _record("compile=true, quantization=int8", CANDIDATE, None, FAILED),
]


@dataclass(frozen=True)
class Logged:
    conf: TrackingConf
    tracker: SweepTracker
    parent_id: str
    children: dict[str, str]  # trial name -> child run id

    @property
    def client(self) -> MlflowClient:
        return self.tracker.client


def _report(folder: Path, records: list[TrialRecord]) -> list[Path]:
    selection = select_winner(records, Gates(QualityConf(), None, wer_applicable=False))
    context = SweepContext(
        sweep_id="s1",
        checkpoint="checkpoints/tiny-synthetic",
        checkpoint_hash="abc",
        synthetic=True,
        hardware="cpu",
        device_name="cpu",
        torch_version="2",
        grid="quick-cpu",
        scenario="fixed",
        objective="latency",
        wer_note=None,
        profile_path=None,
        machine=["- machine at the start: other processes used 0.01 of 2 CPU cores"],
        search=["- search: the `quick-cpu` grid, most promising first"],
        front=[],
        not_run=[],
        budget_minutes=None,
    )
    report = write_report(folder, records, selection, context)
    return [report, folder / "latency_vs_memory.png", folder / "stages.png"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """A sweep logged as ``harness.sweep`` logs one: parent, one child per trial, then the end."""
    root = tmp_path_factory.mktemp("mlflow")
    conf = TrackingConf(f"sqlite:///{root / 'mlflow.db'}", str(root / "mlartifacts"))
    tracker = SweepTracker(conf)
    parent_id = tracker.start_parent("sweep-s1", {"grid": "quick-cpu"}, {}, None)
    children = {
        record.name: tracker.log_trial(parent_id, record, {}, root / "absent")
        for record in TRIALS[:2]
    }
    tracker.finish_parent(parent_id, {}, {}, _report(root, TRIALS[:2]))
    return Logged(conf, tracker, parent_id, children)


def _table(logged: Logged, monkeypatch: pytest.MonkeyPatch):
    # load_table searches runs through MLflow's global tracking URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.conf.tracking_uri)
    return logged.client.load_table(
        logged.tracker.experiment_id, TRIALS_TABLE, run_ids=[logged.parent_id]
    )


def test_the_experiment_is_a_model_training_one_new_or_existing(tmp_path: Path) -> None:
    conf = TrackingConf(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    client = MlflowClient(tracking_uri=conf.tracking_uri)
    created = SweepTracker(conf).experiment_id
    older = client.create_experiment("logged-before-kinds")
    SweepTracker(TrackingConf(conf.tracking_uri, conf.artifact_root, "logged-before-kinds"))
    assert (KIND_TAG, MODEL_TRAINING) == ("mlflow.experimentKind", "custom_model_development")
    assert client.get_experiment(created).tags[KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(older).tags[KIND_TAG] == MODEL_TRAINING


def test_the_parent_run_holds_the_trial_table_report_and_plots(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = {a.path for a in logged.client.list_artifacts(logged.parent_id)}
    assert {TRIALS_TABLE, "report.md", "latency_vs_memory.png", "stages.png"} <= artifacts
    table = _table(logged, monkeypatch)
    assert list(table["trial"]) == ["baseline", "compile=true"]
    assert list(table["status"]) == [OK, OK]
    assert list(table["latency_p50_s"]) == [2.0, 0.5]
    assert list(table["frames_per_s"]) == [12.0, 48.0]
    assert list(table["knob.compile"]) == ["False", "True"]
    assert list(table["run_id"]) == [logged.children["baseline"], logged.children["compile=true"]]
    assert {"ttfa_p50_s", "peak_reserved_mb", "host_rss_mb", "wer", "reason"} <= set(table)


def test_a_resumed_sweep_appends_only_its_new_trials(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logged.tracker.start_parent("sweep-s1", {}, {}, logged.parent_id) == logged.parent_id
    failed = TRIALS[2]
    logged.tracker.log_trial(logged.parent_id, failed, {}, Path("absent"))
    logged.tracker.finish_parent(logged.parent_id, {}, {}, [])
    table = _table(logged, monkeypatch)
    assert list(table["trial"]) == [r.name for r in TRIALS]
    assert table["status"].iloc[-1] == FAILED
    assert table["reason"].iloc[-1] == "RuntimeError: prompt overflows max_seq_len"


def test_a_trial_a_crash_left_half_logged_is_finished_once_not_logged_again(
    tmp_path: Path,
) -> None:
    tracker = SweepTracker(
        TrackingConf(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    )
    parent_id = tracker.start_parent("sweep-s2", {}, {}, None)
    record = _record("compile=true", CANDIDATE, 0.5)
    record.started_at, record.ended_at = 1000.0, 1010.0
    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "sample.wav").write_bytes(b"RIFF")
    (folder / "gone.wav").symlink_to(folder / "deleted.wav")  # vanished while being logged
    with pytest.raises(FileNotFoundError):
        tracker.log_trial(parent_id, record, {}, folder)
    (folder / "gone.wav").unlink()
    run_id = tracker.log_trial(parent_id, record, {}, folder)
    assert tracker.log_trial(parent_id, record, {}, folder) == run_id  # a third call: nothing new
    children = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert [(run.info.run_id, run.info.status) for run in children] == [(run_id, "FINISHED")]
    table = tracker.client.download_artifacts(parent_id, TRIALS_TABLE, str(tmp_path))
    assert [row[-1] for row in json.loads(Path(table).read_text())["data"]] == [run_id]


def test_a_failed_trial_retried_gets_a_run_of_its_own(logged: Logged) -> None:
    retried = dataclasses.replace(TRIALS[2], started_at=2000.0, ended_at=2001.0)
    first = logged.tracker.log_trial(logged.parent_id, retried, {}, Path("absent"))
    again = dataclasses.replace(retried, started_at=3000.0, ended_at=3001.0)
    assert logged.tracker.log_trial(logged.parent_id, again, {}, Path("absent")) != first


def test_runs_url_opens_the_latest_sweeps_saved_view(logged: Logged) -> None:
    experiment_id = logged.tracker.experiment_id
    url = runs_url(BASE, logged.conf)
    assert url == (
        f"{BASE}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={logged.parent_id}"
    )
    tags = logged.client.get_experiment(experiment_id).tags
    view = json.loads(tags[VIEW_TAG + logged.parent_id])
    assert view["name"] == "sweep-s1: trials by p50 latency"
    assert isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["orderByKey"] == "metrics.`latency_p50_s`" and state["orderByAsc"] is True
    assert {"metrics.`latency_p50_s`", "metrics.`ttfa_p50_s`", "tags.`status`"} <= set(
        state["selectedColumns"]
    )
    # The view's filter and sort are valid MLflow search syntax: this sweep's trials, fastest first.
    runs = logged.client.search_runs(
        [experiment_id],
        state["searchFilter"],
        order_by=[state["orderByKey"] + " ASC"],
    )
    assert [run.info.run_name for run in runs][:2] == ["compile=true", "baseline"]
    assert logged.parent_id not in {run.info.run_id for run in runs}


def test_runs_url_for_a_sweep_without_a_view_and_for_an_empty_store(logged: Logged) -> None:
    experiment_id = logged.tracker.experiment_id
    view = logged.client.get_experiment(experiment_id).tags[VIEW_TAG + logged.parent_id]
    logged.client.delete_experiment_tag(experiment_id, VIEW_TAG + logged.parent_id)
    try:
        url = runs_url(BASE, logged.conf)
    finally:
        logged.client.set_experiment_tag(experiment_id, VIEW_TAG + logged.parent_id, view)
    page, _, query = urlsplit(url).fragment.partition("?")
    assert page == f"/experiments/{experiment_id}/runs"
    assert parse_qs(query) == {
        "workflowType": ["machine_learning"],
        "searchFilter": [f"tags.`mlflow.parentRunId` = '{logged.parent_id}'"],
        "orderByKey": ["metrics.`latency_p50_s`"],
        "orderByAsc": ["true"],
    }
    other = TrackingConf(logged.conf.tracking_uri, logged.conf.artifact_root, "never-swept")
    assert runs_url(BASE, other) == BASE
