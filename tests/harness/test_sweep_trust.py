"""Sweeps a user can trust, on the tiny checkpoint: a trial next to a CPU hog is marked NOISY,
re-run and kept from winning; a time budget stops the quick grid and still exports; Optuna's
search logs its trials under one MLflow parent and exports a profile.

The NOISY threshold is set from what else runs on the machine when the tests start, so the hog
decides the verdicts on a busy machine as on a quiet one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sweep_args import TinySweep

from harness.sweep.conclude import SweepOutcome
from harness.sweep.machine import survey

pytestmark = pytest.mark.slow

# Short trials (isolation is judged on other processes' CPU time, not on how long a trial runs).
QUICK = (
    "scenario.fixed_frames=8",
    "scenario.fidelity_frames=4",
    "scenario.repeats=6",
    "isolation.retry_wait_s=0.5",
)


@contextmanager
def cpu_hog() -> Iterator[None]:
    """A process spinning on one core for as long as the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trust")


@pytest.fixture(scope="module")
def limit() -> str:
    """The NOISY threshold: half a core above what else runs on this machine now (measured as a
    sweep's survey measures it), so the hog, a whole core, is what these tests judge, whatever
    else the machine is doing."""
    background = survey("cpu").get("other_cpu_cores", 0.0)
    return f"isolation.max_other_cores={background + 0.5:.2f}"


@pytest.fixture(scope="module")
def hogged(root: Path, tiny_sweep: TinySweep, limit: str) -> SweepOutcome:
    """The engine default run next to a CPU hog, resuming a sweep whose baseline ran without one
    (so the hog disturbs the candidate alone)."""
    tiny_sweep(root, "sweep_id=hog", "grid.points=[]", limit, *QUICK)
    with cpu_hog():
        return tiny_sweep(root, "resume=hog", "grid.points=[{}]", limit, *QUICK)


@pytest.fixture(scope="module")
def budgeted(root: Path, tiny_sweep: TinySweep, limit: str) -> SweepOutcome:
    """The quick grid under a budget too small for more than the baseline and one candidate,
    with no hog and no earlier sweeps (which would reorder the grid by what they measured)."""
    return tiny_sweep(
        root / "no-history",
        "sweep_id=budget",
        "grid=quick-cpu",
        "budget_minutes=0.01",
        limit,
        *QUICK,
    )


def test_a_trial_next_to_a_cpu_hog_is_noisy_rerun_and_cannot_win(
    root: Path, hogged: SweepOutcome
) -> None:
    baseline, candidate = hogged.records
    assert baseline.ok  # resumed from the run without the hog
    assert candidate.ok and candidate.noisy, candidate.isolation
    assert "other processes used" in candidate.noisy and "python" in candidate.noisy
    assert candidate.notes["isolation"].startswith("re-run after NOISY")
    assert candidate.metric("other_cpu_cores") > 0.5  # the hog's whole core, at least half seen
    assert hogged.selection.failures[candidate.name][0].startswith("NOISY")
    assert hogged.selection.winner.is_baseline
    report = hogged.report_path.read_text()
    assert "| OK NOISY |" in report and "## NOISY trials" in report
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fishbench-sweep")
    noisy = client.search_runs([experiment.experiment_id], filter_string="tags.noisy = 'true'")
    assert candidate.name in {run.info.run_name for run in noisy}


def test_the_same_trial_without_the_hog_is_not_noisy(
    hogged: SweepOutcome, budgeted: SweepOutcome
) -> None:
    disturbed, quiet = hogged.records[1], budgeted.records[1]
    assert quiet.config_hash == disturbed.config_hash
    assert quiet.ok and quiet.noisy is None, quiet.isolation
    assert "isolation" not in quiet.notes
    assert budgeted.selection.failures[quiet.name] == []


def test_budget_stops_the_quick_grid_after_the_baseline_and_one_candidate(
    budgeted: SweepOutcome,
) -> None:
    outcome = budgeted
    assert [r.name for r in outcome.records] == ["baseline", "engine-default"]
    assert outcome.not_run == [
        "quantization=int8",
        "chunk_size=8",
        "eos_check_interval=32",
        "compile_decode=default",
        "codec_thread=True",
    ]
    assert outcome.profile_path is not None and outcome.profile_path.is_file()
    assert "Budget of 0.01 min reached; not run: quantization=int8" in (
        outcome.report_path.read_text()
    )


def test_optuna_search_logs_its_trials_under_one_parent_and_exports(
    root: Path, tiny_sweep: TinySweep
) -> None:
    outcome = tiny_sweep(
        root,
        "sweep_id=optuna",
        "grid.points=[{quantization:int8},{chunk_size:8},{eos_check_interval:32}]",
        "search=optuna",
        "search.n_trials=3",
        "search.population_size=2",  # the third suggestion comes from NSGA-II, not the random start
        *QUICK,
    )
    assert outcome.records[0].is_baseline
    candidates = outcome.records[1:]
    assert 1 <= len(candidates) <= 3
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fishbench-sweep")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'",
    )
    assert sorted(run.info.run_name for run in children) == sorted(r.name for r in outcome.records)
    assert outcome.profile_path is not None and outcome.profile_path.is_file()
    report = outcome.report_path.read_text()
    assert "search: Optuna NSGA-II over quantization=choice(none,int8)" in report
    assert "3 suggestions" in report and "Pareto front" in report
