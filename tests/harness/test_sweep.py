"""A real two-trial sweep on the tiny checkpoint into a temporary MLflow store, then a resumed one
with a trial forced to fail."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile
from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome
from harness.sweep.run import run_sweep

pytestmark = pytest.mark.slow

# Long enough that its prompt alone overflows max_seq_len=256: the forced failure.
TEXT = (
    "The weather was calm that evening, so we walked along the river and talked about music. "
    "Later we stopped at a small cafe near the old bridge, ordered two cups of tea, and watched "
    "the boats drift slowly past the lights of the harbor while the band on the corner played "
    "songs we had not heard since we were children, and nobody seemed to be in any hurry at all."
)
REQUIRED_METRICS = {
    "latency_p50_s",
    "latency_p95_s",
    "ttfa_p50_s",
    "frames_per_s",
    "rtf",
    "host_rss_mb",
    "compile_s",
    "stage_decode_s",
}
FIDELITY_METRICS = {
    "fidelity_slow_kl",
    "fidelity_fast_kl",
    "fidelity_slow_top1",
    "fidelity_fast_top1",
    "fidelity_codec_snr_db",
}
REQUIRED_TAGS = {
    "gpu_name",
    "compute_capability",
    "torch_version",
    "checkpoint_hash",
    "synthetic",
    "status",
    "wer",
}


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    checkpoint: Path

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def children(self, parent_id: str):
        experiment = self.client().get_experiment_by_name("fishbench-sweep")
        runs = self.client().search_runs([experiment.experiment_id], max_results=100)
        return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_id]


def sweep(
    store: Store, reference: tuple[Path, str], points: str, resume: str | None = None
) -> SweepOutcome:
    overrides = [
        f"checkpoint={store.checkpoint}",
        f"reports_dir={store.root / 'reports'}",
        f"tracking.tracking_uri={store.uri}",
        f"tracking.artifact_root={store.root / 'mlartifacts'}",
        f"scenario.reference_audio={reference[0]}",
        "scenario.fixed_frames=24",
        "scenario.warmup_runs=1",
        "scenario.repeats=2",
        "scenario.max_repeats=2",
        "scenario.fidelity_frames=8",
        "trial_timeout_s=300",
        f"grid.points={points}",
        f"resume={resume}" if resume else "sweep_id=test",
    ]
    cfg = build_config(overrides)
    cfg.scenario.text = TEXT
    cfg.scenario.reference_text = reference[1]
    return run_sweep(cfg, Console(width=200))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Store:
    root = tmp_path_factory.mktemp("sweep")
    return Store(root, f"sqlite:///{root / 'mlflow.db'}", tiny_checkpoint)


@pytest.fixture(scope="module")
def first(store: Store, piper_reference: tuple[Path, str]) -> SweepOutcome:
    return sweep(store, piper_reference, "[{quantization:int8}]")


@pytest.fixture(scope="module")
def resumed(store: Store, piper_reference: tuple[Path, str], first: SweepOutcome) -> SweepOutcome:
    return sweep(store, piper_reference, "[{quantization:int8},{max_seq_len:256}]", resume="test")


def test_two_trial_sweep_logs_parent_children_metrics_and_tags(
    store: Store, first: SweepOutcome
) -> None:
    assert [(r.name, r.status) for r in first.records] == [
        ("baseline", "OK"),
        ("quantization=int8", "OK"),
    ]
    parent = store.client().get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = {run.info.run_name: run for run in store.children(first.parent_run_id)}
    assert set(children) == {"baseline", "quantization=int8"}
    for name, run in children.items():
        assert set(run.data.metrics) >= REQUIRED_METRICS, name
        assert set(run.data.tags) >= REQUIRED_TAGS, name
        assert run.data.tags["status"] == "OK"
        assert run.data.tags["synthetic"] == "true"
        assert run.data.tags["wer"].startswith("n/a")
        assert "wer" not in run.data.metrics
        artifacts = {a.path for a in store.client().list_artifacts(run.info.run_id)}
        assert artifacts >= {"sample.wav", "timings.json", "config.yaml"}, name
    candidate = children["quantization=int8"]
    assert set(candidate.data.metrics) >= FIDELITY_METRICS
    assert candidate.data.params["quantization"] == "int8"
    assert "profile.yaml" in {a.path for a in store.client().list_artifacts(candidate.info.run_id)}
    champions = [run for run in children.values() if run.data.tags.get("champion") == "true"]
    assert len(champions) == 1
    assert len(list(first.folder.glob("fidelity-reference-*.pt"))) == 1  # the candidates' fp32 run


def test_exported_profile_loads_into_the_engine(store: Store, first: SweepOutcome) -> None:
    reports = store.root / "reports"
    assert first.profile_path == reports / "profile.yaml"
    assert (reports / "profiles" / "cpu-test.yaml").is_file()
    profile = EngineProfile.load(first.profile_path)
    assert profile.provenance.mlflow_run_id == first.selection.winner.run_id
    assert profile.provenance.hardware == "cpu"
    assert profile.provenance.metrics["latency_p50_s"] > 0
    engine = OptimizedFishSpeech.from_checkpoint(store.checkpoint, profile)
    assert engine.synthesize("Hello there.", fixed_frames=4, seed=0).size > 0
    report = first.report_path.read_text()
    assert "| baseline |" in report and "champion" in report
    assert (first.folder / "latency_vs_memory.png").stat().st_size > 0
    assert (first.folder / "stages.png").stat().st_size > 0


def test_forced_failure_is_recorded_failed_and_the_sweep_finishes(
    store: Store, resumed: SweepOutcome
) -> None:
    failed = resumed.records[-1]
    assert (failed.name, failed.status) == ("max_seq_len=256", "FAILED")
    assert "max_seq_len" in failed.headline
    runs = {run.info.run_name: run for run in store.children(resumed.parent_run_id)}
    assert runs["max_seq_len=256"].info.status == "FAILED"
    assert runs["max_seq_len=256"].data.tags["status"] == "FAILED"
    assert "max_seq_len" in runs["max_seq_len=256"].data.tags["reason"]
    assert "## Failed trials" in resumed.report_path.read_text()
    assert resumed.profile_path.is_file()


def test_resume_skips_finished_trials(
    store: Store, first: SweepOutcome, resumed: SweepOutcome
) -> None:
    assert resumed.parent_run_id == first.parent_run_id
    before = {r.name: (r.run_id, r.started_at) for r in first.records}
    after = {r.name: (r.run_id, r.started_at) for r in resumed.records}
    assert after["baseline"] == before["baseline"]
    assert after["quantization=int8"] == before["quantization=int8"]
    children = store.children(resumed.parent_run_id)
    assert len(children) == 3
    assert sum(run.data.tags.get("champion") == "true" for run in children) == 1
