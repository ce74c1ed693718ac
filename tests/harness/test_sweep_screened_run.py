"""A whole sweep, MLflow and report included, with its trials faked (``execute_trial`` returns
made-up records at once, latency set by ``chunk_size``): the estimate is logged before the first
trial; a screened grid screens every candidate, confirms the fastest and those within their
noise, and only a confirmed one wins; a budget that runs out while screening still confirms the
fastest screen, and the log and report name what was left out and the command that runs it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from harness.sweep import loop
from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome
from harness.sweep.grid import TrialSpec
from harness.sweep.run import rerun_command, run_sweep
from harness.trial.record import CONFIRM, OK, SCREEN, TrialRecord

PASSING = {"slow_kl": 0.0, "fast_kl": 0.0, "slow_top1": 1.0, "fast_top1": 1.0, "codec_snr_db": 99}
# chunk_size -> the latency of its trials: 8 is the fastest, 12 within its noise, 24 slowest
LATENCY = {8: 0.50, 12: 0.51, 16: 0.60, 20: 0.70, 24: 0.80}
POINTS = "grid.points=[{chunk_size:8},{chunk_size:12},{chunk_size:20},{chunk_size:24},{}]"


def fake_trial(spec: TrialSpec, ctx: object) -> TrialRecord:
    """A record made up at once, after 0.3 s (so a 0.6 s budget is spent by two trials)."""
    logging.getLogger("fake").info("fake trial %s", spec.name)
    started = time.time()
    time.sleep(0.3)
    record = spec.record()
    latency = 2.0 if spec.is_baseline else LATENCY[spec.knobs["chunk_size"]]
    record.status = OK
    record.metrics = {"latency_p50_s": latency, "host_rss_mb": 100.0, "compile_s": 0.1}
    record.runs = [{"total_s": latency * f} for f in (0.99, 1.0, 1.01)]
    record.fidelity = PASSING if spec.stage != SCREEN and not spec.is_baseline else None
    record.started_at, record.ended_at = started, time.time()
    return record


def sweep(root: Path, checkpoint: Path, *overrides: str) -> SweepOutcome:
    args = [
        f"checkpoint={checkpoint}",
        f"reports_dir={root / 'reports'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'mlartifacts'}",
        "scenario.reference_audio=null",
        POINTS,
        "screen.enabled=true",
        "screen.keep=1",
        *overrides,
    ]
    cfg = build_config(args)
    return run_sweep(cfg, Console(width=200), rerun_command(args))


@pytest.fixture
def faked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "execute_trial", fake_trial)


def _order(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().split(":")[0]
        for r in caplog.records
        if r.getMessage().startswith(("estimate:", "fake trial"))
    ]


def test_a_screened_sweep_estimates_first_screens_all_and_confirms_the_fastest(
    tmp_path: Path, tiny_checkpoint: Path, faked: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        outcome = sweep(tmp_path, tiny_checkpoint)
    assert _order(caplog)[:2] == ["estimate", "fake trial baseline"]
    stages = [(r.name, r.stage) for r in outcome.records]
    assert stages[0] == ("baseline", None)
    assert sorted(stages[1:6]) == sorted(
        [(f"chunk_size={c} (screen)", SCREEN) for c in (8, 12, 20, 24)]
        + [("engine-default (screen)", SCREEN)]
    )
    assert stages[6:] == [("chunk_size=8", CONFIRM), ("chunk_size=12", CONFIRM)]  # 12: noise
    assert outcome.selection.winner.name == "chunk_size=8"
    assert set(outcome.selection.failures) == {"chunk_size=8", "chunk_size=12"}
    report = outcome.report_path.read_text()
    assert "## Screening" in report and "## Time" in report and "- estimate: " in report
    assert "| chunk_size=24 (screen) | OK |" in report and "not confirmed: #5 of 5" in report
    assert "confirmed: #2 of 5: within the noise of the fastest" in report
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    screens = client.search_runs(
        [client.get_experiment_by_name("fishbench-sweep").experiment_id],
        filter_string="tags.stage = 'screen'",
    )
    assert len(screens) == 5 and all("screening" in run.data.tags for run in screens)


def test_a_budget_spent_while_screening_still_confirms_the_fastest_screen(
    tmp_path: Path, tiny_checkpoint: Path, faked: None, caplog: pytest.LogCaptureFixture
) -> None:
    """0.01 min (0.6 s, spent by two 0.3 s trials): the baseline and the first screen always
    run, the other screens do not fit beside the time kept for a confirmation, and the fastest
    screen's confirmation runs."""
    with caplog.at_level(logging.INFO):
        outcome = sweep(tmp_path, tiny_checkpoint, "budget_minutes=0.01", "scenario.repeats=6")
    names = [r.name for r in outcome.records]
    assert names == ["baseline", "chunk_size=8 (screen)", "chunk_size=8"]
    assert outcome.not_run == ["chunk_size=12", "chunk_size=20", "chunk_size=24", "engine-default"]
    assert outcome.selection.winner.name == "chunk_size=8"
    rerun = f"budget_minutes=inf resume={outcome.folder.name}"
    assert f"screen.keep=1 scenario.repeats=6 {rerun}`" in outcome.report_path.read_text()
    assert "budget 0.01 min (budget_minutes=0.01): 3 of 7 trials fit" in caplog.text
