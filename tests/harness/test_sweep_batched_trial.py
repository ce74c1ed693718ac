"""A real throughput sweep on the tiny checkpoint: a max_batch 2 candidate streams two requests
at once after its repeats and records what they did together; the baseline records the same
figures one request at a time; the export and the report say which objective chose."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sweep_args import SHORT, TinySweep

from engine.profile import EngineProfile
from harness.sweep.conclude import SweepOutcome
from harness.trial.measure import CONCURRENCY_FILE

pytestmark = pytest.mark.slow

THROUGHPUT = (
    "aggregate_audio_s_per_s",
    "aggregate_frames_per_s",
    "per_request_frames_per_s",
    "per_request_rtf_max",
    "concurrent_ttfa_p50_s",
    "concurrent_ttfa_p95_s",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batched")


@pytest.fixture(scope="module")
def batched(root: Path, tiny_sweep: TinySweep) -> SweepOutcome:
    return tiny_sweep(
        root,
        "sweep_id=batched",
        "grid.points=[{max_batch:2}]",
        "quality=throughput",
        "scenario.concurrent_rounds=2",
        *SHORT,
    )


def test_a_max_batch_2_trial_records_two_requests_decoded_together(batched: SweepOutcome) -> None:
    candidate = batched.records[1]
    assert candidate.ok and candidate.knobs["max_batch"] == 2, candidate.reason
    m = candidate.metrics
    assert (m["concurrency"], m["concurrent_rounds"]) == (2.0, 2.0)
    assert all(m[key] > 0 for key in THROUGHPUT), m
    assert m["batch_occupancy"] > 1.0  # the two requests shared frame steps
    row = json.loads(
        (batched.folder / "trials" / candidate.config_hash / CONCURRENCY_FILE).read_text()
    )
    requests = row["requests"]
    assert len(requests) == 4 and {q["report"]["frames"] for q in requests} == {8}
    assert len({q["seed"] for q in requests}) == 4  # no request repeats another's seed
    per_round = [
        sum(q["report"]["audio_s"] for q in pair)
        / (max(q["end_s"] for q in pair) - min(q["start_s"] for q in pair))
        for pair in (requests[:2], requests[2:])
    ]
    assert m["aggregate_audio_s_per_s"] == pytest.approx(statistics.median(per_round))
    assert m["per_request_rtf_max"] == pytest.approx(max(row["per_request_rtf"]))


def test_one_request_at_a_time_records_the_same_figures_at_concurrency_1(
    batched: SweepOutcome,
) -> None:
    baseline = batched.records[0]
    m = baseline.metrics
    assert m["concurrency"] == 1.0 and all(m[key] > 0 for key in THROUGHPUT), m
    streamed = [run["audio_s"] / run["stream_total_s"] for run in baseline.runs]
    assert m["aggregate_audio_s_per_s"] == pytest.approx(statistics.median(streamed))


def test_the_sweep_exports_and_reports_its_objective(root: Path, batched: SweepOutcome) -> None:
    profile = EngineProfile.load(batched.profile_path)
    assert profile.provenance.objective == "throughput"
    report = batched.report_path.read_text()
    assert "- objective: throughput: the most audio seconds per second" in report
    throughput = report.split("## Throughput", 1)[1]
    assert "| baseline | 1 |" in throughput and "| max_batch=2 | 2 |" in throughput
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_run(batched.parent_run_id).data.params["objective"] == "throughput"
    run = client.get_run(batched.records[1].run_id)
    assert run.data.metrics["aggregate_audio_s_per_s"] > 0
