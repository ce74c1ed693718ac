"""Sweeps a user can trust, on the tiny checkpoint: a trial next to a CPU hog is marked NOISY,
re-run and kept from winning; a time budget stops the quick grid and still exports; Optuna's
search logs its trials under one MLflow parent and exports a profile."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from harness.sweep.compose import build_config
from harness.sweep.runner import SweepOutcome, run_sweep

pytestmark = pytest.mark.slow

QUICK = [
    "scenario.fixed_frames=16",
    "scenario.warmup_runs=1",
    "scenario.repeats=6",
    "scenario.max_repeats=6",
    "scenario.fidelity_frames=8",
    "trial_timeout_s=300",
    "isolation.retry_wait_s=0.5",
]


def sweep(
    root: Path, checkpoint: Path, reference: tuple[Path, str], sweep_id: str, *overrides: str
) -> SweepOutcome:
    cfg = build_config(
        [
            f"checkpoint={checkpoint}",
            f"reports_dir={root / 'reports'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'mlartifacts'}",
            f"scenario.reference_audio={reference[0]}",
            f"sweep_id={sweep_id}",
            *QUICK,
            *overrides,
        ]
    )
    cfg.scenario.reference_text = reference[1]
    return run_sweep(cfg, Console(width=200))


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


def test_a_trial_next_to_a_cpu_hog_is_noisy_rerun_and_cannot_win(
    root: Path, tiny_checkpoint: Path, piper_reference: tuple[Path, str]
) -> None:
    one_candidate = "grid.points=[{chunk_size:8}]"
    with cpu_hog():
        disturbed = sweep(root, tiny_checkpoint, piper_reference, "hog", one_candidate)
    candidate = disturbed.records[1]
    assert candidate.ok and candidate.noisy, candidate.isolation
    assert "other processes used" in candidate.noisy and "python" in candidate.noisy
    assert candidate.notes["isolation"].startswith("re-run after NOISY")
    assert candidate.metric("other_cpu_cores") > 0.5
    assert disturbed.selection.failures[candidate.name][0].startswith("NOISY")
    assert disturbed.selection.winner.is_baseline
    report = disturbed.report_path.read_text()
    assert "| OK NOISY |" in report and "## NOISY trials" in report

    quiet = sweep(root, tiny_checkpoint, piper_reference, "quiet", one_candidate)
    candidate = quiet.records[1]
    assert candidate.ok and candidate.noisy is None, candidate.isolation
    assert "isolation" not in candidate.notes
    assert quiet.selection.winner.name == candidate.name
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fishbench-sweep")
    noisy = client.search_runs([experiment.experiment_id], filter_string="tags.noisy = 'true'")
    assert "chunk_size=8" in {run.info.run_name for run in noisy}


def test_budget_stops_the_quick_grid_after_the_baseline_and_one_candidate(
    root: Path, tiny_checkpoint: Path, piper_reference: tuple[Path, str]
) -> None:
    fresh = root / "no-history"  # earlier sweeps would reorder the grid by what they measured
    outcome = sweep(
        fresh, tiny_checkpoint, piper_reference, "budget", "grid=quick-cpu", "budget_minutes=0.01"
    )
    assert [r.name for r in outcome.records] == ["baseline", "engine-default"]
    assert outcome.not_run == [
        "quantization=int8",
        "chunk_size=8",
        "eos_check_interval=32",
        "compile_decode=default",
    ]
    assert outcome.profile_path is not None and outcome.profile_path.is_file()
    assert "Budget of 0.01 min reached; not run: quantization=int8" in (
        outcome.report_path.read_text()
    )


def test_optuna_search_logs_its_trials_under_one_parent_and_exports(
    root: Path, tiny_checkpoint: Path, piper_reference: tuple[Path, str]
) -> None:
    outcome = sweep(
        root,
        tiny_checkpoint,
        piper_reference,
        "optuna",
        "grid.points=[{quantization:int8},{chunk_size:8},{eos_check_interval:32}]",
        "search=optuna",
        "search.n_trials=4",
    )
    assert outcome.records[0].is_baseline
    candidates = outcome.records[1:]
    assert 1 <= len(candidates) <= 4
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
    assert "4 suggestions" in report and "Pareto front" in report
