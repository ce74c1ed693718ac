"""launcher=ray on a local Ray instance: each trial in its own fresh worker process, a trial that
fails inside its worker recorded FAILED with the reason, and resume skipping finished trials. The
local instance listens on 127.0.0.1 only and keeps its files (auth token included) in its own
folder, nothing under the home folder, and its workers run this interpreter: no copy of the project
shipped to them, even under ``uv run``."""

from __future__ import annotations

import getpass
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
from ray._private.runtime_env import uv_runtime_env_hook
from sweep_args import TinySweep

from harness.sweep.conclude import SweepOutcome

pytestmark = pytest.mark.slow
# Its prompt alone overflows max_seq_len=256: the trial fails inside its worker.
TEXT = " ".join(["The weather was calm that evening, so we walked along the river."] * 8)
POINTS = "[{chunk_size:8},{max_seq_len:256}]"
RAY = (
    "launcher=ray",
    "launcher.allow_shared_cpu=true",
    "isolation.max_other_cores=8",  # side-by-side trials on shared CPUs, on purpose
)
UV_RUN = ["uv", "run", "--frozen", "pytest"]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Where a local cluster's files go (README): a folder of the user's own in the temp folder.
LOCAL_DIR = Path(tempfile.gettempdir()) / f"fishbench-ray-{getpass.getuser()}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_sweep: TinySweep) -> Iterator[Path]:
    """An empty home folder for the whole Ray session (its fixtures made before it), the driver
    seen by Ray as run under ``uv run`` (as ``make test`` runs it) however pytest was started."""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(folder))
        patch.setattr(uv_runtime_env_hook, "_get_uv_run_cmdline", lambda: UV_RUN)
        yield folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("ray")
    ray.shutdown()


@pytest.fixture(scope="module")
def first(root: Path, tiny_sweep: TinySweep) -> SweepOutcome:
    return tiny_sweep(root, f"grid.points={POINTS}", "sweep_id=ray", *RAY, text=TEXT)


def worker_pid(note: str) -> int:
    return int(re.fullmatch(r"Ray worker pid (\d+) on .+", note).group(1))


def test_each_trial_runs_in_its_own_ray_worker(first: SweepOutcome) -> None:
    assert [(r.name, r.status) for r in first.records] == [
        ("baseline", "OK"),
        ("chunk_size=8", "OK"),
        ("max_seq_len=256", "FAILED"),
    ]
    pids = {worker_pid(r.notes["worker"]) for r in first.records}
    assert len(pids) == 3
    assert all(
        (first.folder / "trials" / r.config_hash / "sample.wav").is_file()
        for r in first.records[:2]
    )


def test_a_trial_failing_in_its_worker_is_failed_with_its_reason(first: SweepOutcome) -> None:
    failed = first.records[2]
    assert "max_seq_len" in failed.headline
    assert first.selection.winner.name == "chunk_size=8"
    assert first.profile_path is not None and first.profile_path.is_file()


def test_resume_skips_finished_trials(
    root: Path, tiny_sweep: TinySweep, first: SweepOutcome
) -> None:
    more = "[{chunk_size:8},{max_seq_len:256},{precision:fp16}]"  # fp16: SKIPPED on CPU
    resumed = tiny_sweep(root, f"grid.points={more}", "resume=ray", *RAY, text=TEXT)
    before = {r.name: (r.run_id, r.status, r.notes["worker"]) for r in first.records}
    after = {r.name: (r.run_id, r.status, r.notes.get("worker")) for r in resumed.records}
    assert {name: after[name] for name in before} == before  # neither re-run nor retried
    added = resumed.records[-1]
    assert (added.name, added.status) == ("precision=fp16", "SKIPPED")
    assert "worker" not in added.notes  # decided without a Ray task


def _listening(proc: psutil.Process) -> set[str]:
    try:
        connections = proc.net_connections(kind="inet")
    except psutil.Error:  # a worker that just ended
        return set()
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}


def test_the_local_cluster_listens_on_loopback_only(first: SweepOutcome) -> None:
    me = psutil.Process()
    addresses = set().union(*(_listening(p) for p in [me, *me.children(recursive=True)]))
    assert addresses, "no Ray process listens at all"
    assert addresses <= LOOPBACK, f"Ray listens on {addresses - LOOPBACK}"


def test_the_local_clusters_files_stay_in_its_folder(first: SweepOutcome, home: Path) -> None:
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.parent == LOCAL_DIR / "ray"
    assert LOCAL_DIR.stat().st_mode & 0o777 == 0o700
    assert (LOCAL_DIR / "auth_token").stat().st_mode & 0o777 == 0o600
    assert not (home / ".ray").exists()  # no ~/.ray/auth_token


def test_the_local_clusters_workers_run_this_interpreter(first: SweepOutcome) -> None:
    """Under ``uv run`` Ray would otherwise ship the project to every session and have each
    worker ``uv run`` (a whole environment synced) in that copy."""
    assert uv_runtime_env_hook._get_uv_run_cmdline() == UV_RUN
    runtime_env = ray.get_runtime_context().runtime_env
    assert "working_dir" not in runtime_env and "py_executable" not in runtime_env
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert not list(session.glob("runtime_resources/working_dir_files/*"))
