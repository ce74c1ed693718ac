"""The shared tracking server: `scripts/mlflow-server.sh` (what `make mlflow-server` runs) on a
real PostgreSQL, a 3-trial sweep logging to it over HTTP with server-side artifacts, read back by
`fishbench compare`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient
from ports import free_port
from sweep_args import TinySweep

from harness.cli import main as fishbench
from harness.sweep.conclude import SweepOutcome

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 180


@dataclass(frozen=True)
class Server:
    url: str
    pg_port: int
    folder: Path


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Straight under /tmp: PostgreSQL runs as `postgres` when we are root and must reach its data.
    folder = Path(tempfile.mkdtemp(prefix="fishbench-mlflow-"))
    port, pg_port = free_port(), free_port()
    env = {
        **os.environ,
        "MLFLOW_SERVER_DIR": str(folder),
        "MLFLOW_PORT": str(port),
        "MLFLOW_PG_PORT": str(pg_port),
        "MLFLOW_HOST": "127.0.0.1",
    }
    log = (folder.parent / f"{folder.name}.log").open("w")
    proc = subprocess.Popen(
        ["bash", "scripts/mlflow-server.sh"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_DEADLINE_S
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tracking server did not start:\n{Path(log.name).read_text()[-3000:]}")
        time.sleep(1)
    yield Server(url, pg_port, folder)
    proc.terminate()  # the script's trap stops MLflow, then PostgreSQL
    proc.wait(60)
    log.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def swept(
    server: Server, tiny_sweep: TinySweep, tmp_path_factory: pytest.TempPathFactory
) -> SweepOutcome:
    return tiny_sweep(
        tmp_path_factory.mktemp("server-sweep"),
        "grid.points=[{chunk_size:8},{quantization:int8}]",
        tracking_uri=server.url,
    )


def test_a_sweep_logs_to_the_server_on_postgresql_with_served_artifacts(
    server: Server, swept: SweepOutcome
) -> None:
    assert [r.status for r in swept.records] == ["OK", "OK", "OK"]
    with (
        psycopg2.connect(
            host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow"
        ) as db,
        db.cursor() as cursor,
    ):
        cursor.execute("SELECT name FROM runs")
        names = {row[0] for row in cursor.fetchall()}
    assert {"baseline", "chunk_size=8", "quantization=int8"} < names
    client = MlflowClient(server.url)
    child = client.get_run(swept.records[1].run_id)
    assert child.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "sample.wav" in {a.path for a in client.list_artifacts(child.info.run_id)}
    for key in ("hardware_id", "gpu_name", "vram_mb", "driver_version", "cuda_version"):
        assert key in child.data.tags, key


def test_compare_reads_the_server_back(
    server: Server, swept: SweepOutcome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fishbench(["compare", "--tracking-uri", server.url, "-o", str(tmp_path)]) == 0
    report = next(tmp_path.glob("*.md")).read_text()
    assert next(tmp_path.glob("*.png")).stat().st_size > 0
    winner = swept.selection.winner
    row = next(line for line in report.splitlines() if line.startswith("| CPU "))
    assert f"| {winner.name} |" in row
    assert f"| sweep-{swept.folder.name} |" in row
    baseline = swept.records[0].metric("latency_p50_s")
    assert f"{baseline / winner.metric('latency_p50_s'):.2f}x" in row
    assert "wrote" in capsys.readouterr().out
