"""Live processes for the UI tests: the real service on the tiny checkpoint, and the Gradio page.

Both run as subprocesses on free loopback ports. A process that dies or never becomes ready fails
the tests that need it, with the tail of its log; nothing here skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "reports" / "ui"
SERVICE_START_S = 180
GRADIO_START_S = 90


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@dataclass
class Launched:
    """A started server process, its base URL and its log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> str:
        """Poll ``ready`` until it holds; fail loudly if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{what} exited with code {self.proc.returncode}:\n{_log_tail(self.log)}"
                )
            try:
                if ready():
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{what} was not ready after {timeout_s:.0f} s:\n{_log_tail(self.log)}")


@contextmanager
def launched(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[Launched]:
    """Run ``command`` from the repository root with ``env`` added; stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield Launched(proc, f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def service(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """A real ``uvicorn serving.app:app`` on the tiny checkpoint, short generations, CPU.

    Started, not awaited: ``service_url`` waits, so Gradio can start while the model loads.
    """
    folder = tmp_path_factory.mktemp("service")
    port = free_port()
    env = {
        "MODEL_DIR": str(tiny_checkpoint),
        "VOICES_DIR": str(folder / "voices"),
        "PROFILE_PATH": str(folder / "no-profile.yaml"),
        "MAX_NEW_TOKENS": "16",
        "WARMUP": "false",
        "API_KEY": "",
    }
    command = [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1"]
    with launched([*command, "--port", str(port)], env, port, folder / "service.log") as proc:
        yield proc


@pytest.fixture(scope="session")
def service_url(service: Launched) -> str:
    """The service's base URL once ``/health`` says ready."""

    def ready() -> bool:
        return httpx.get(f"{service.url}/health", timeout=2).json().get("status") == "ready"

    return service.wait_until(ready, SERVICE_START_S, "the fishbench service")


@pytest.fixture(scope="session")
def down_url() -> str:
    """A service URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def use_service(service_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the UI code (which reads ``API_URL``) at the live service."""
    monkeypatch.setenv("API_URL", service_url)
    monkeypatch.delenv("API_KEY", raising=False)
    return service_url


@pytest.fixture(scope="session")
def gradio_url(
    service: Launched, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``python ui/gradio_app.py`` with a ready service behind it (both start in parallel)."""
    port = free_port()
    env = {
        "API_URL": service.url,
        "API_KEY": "",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path_factory.mktemp("gradio") / "gradio.log"
    with launched([sys.executable, "ui/gradio_app.py"], env, port, log) as gradio:
        url = gradio.wait_until(
            lambda: httpx.get(gradio.url, timeout=2).is_success, GRADIO_START_S, "Gradio"
        )
        request.getfixturevalue("service_url")
        yield url


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a gliding tone with a little noise: a stand-in reference recording."""
    rate = 22_050
    t = np.arange(2 * rate) / rate
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * (180 + 60 * t) * t) + 0.01 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("reference") / "reference.wav"
    sf.write(path, tone.astype(np.float32), rate)
    return path


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """``reports/ui/``, where the browser tests leave screenshots for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
