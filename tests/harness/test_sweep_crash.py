"""A sweep that crashes right after MLflow logged a trial (a full disk, here) is closed FAILED in
MLflow, and resuming it logs that trial no second time: one child run per trial, one table row."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sweep_args import SHORT, TinySweep

from harness.sweep.conclude import SweepOutcome
from harness.sweep.tracking import TRIALS_TABLE, SweepTracker
from harness.trial.record import TrialRecord

pytestmark = pytest.mark.slow
# One candidate, short trials, no NOISY re-runs: only what MLflow holds is judged here.
FAST = ("grid.points=[{chunk_size:8}]", *SHORT)
CRASH = "No space left on device (after MLflow logged the trial)"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def parent_run(root: Path) -> Any:
    experiment = client(root).get_experiment_by_name("fishbench-sweep")
    (parent,) = client(root).search_runs([experiment.experiment_id], "tags.kind = 'sweep'")
    return parent


@pytest.fixture(scope="module")
def crashed(root: Path, tiny_sweep: TinySweep) -> str:
    """The sweep stopped by an error right after MLflow logged its candidate; the parent's
    status as it was left."""
    log_trial = SweepTracker.log_trial

    def then_full_disk(self: SweepTracker, parent_id: str, record: TrialRecord, *args: Any) -> str:
        run_id = log_trial(self, parent_id, record, *args)
        if not record.is_baseline:
            raise OSError(errno.ENOSPC, CRASH)
        return run_id

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SweepTracker, "log_trial", then_full_disk)
        with pytest.raises(OSError, match="after MLflow logged the trial"):
            tiny_sweep(root, "sweep_id=crash", *FAST)
    return parent_run(root).info.status


@pytest.fixture(scope="module")
def resumed(root: Path, tiny_sweep: TinySweep, crashed: str) -> SweepOutcome:
    return tiny_sweep(root, "resume=crash", *FAST)


def test_a_crashed_sweep_is_not_left_running_in_mlflow(crashed: str) -> None:
    assert crashed == "FAILED"


def test_resuming_logs_no_trial_twice(root: Path, resumed: SweepOutcome) -> None:
    children = client(root).search_runs(
        [parent_run(root).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{resumed.parent_run_id}'",
    )
    assert sorted(run.info.run_name for run in children) == ["baseline", "chunk_size=8"]
    assert {run.info.status for run in children} == {"FINISHED"}
    by_name = {run.info.run_name: run for run in children}
    for record in resumed.records:
        run = by_name[record.name]
        assert record.run_id == run.info.run_id  # the run of the crash, adopted
        assert run.info.start_time == int(record.started_at * 1000)  # the trial ran once
    assert parent_run(root).info.status == "FINISHED"


def test_the_trial_table_has_one_row_per_trial(root: Path, resumed: SweepOutcome) -> None:
    table = Path(client(root).download_artifacts(resumed.parent_run_id, TRIALS_TABLE, str(root)))
    rows = json.loads(table.read_text())
    trials = [row[rows["columns"].index("trial")] for row in rows["data"]]
    assert sorted(trials) == ["baseline", "chunk_size=8"]
