"""The server under soak: one started here on a checkpoint, or one already running (by URL)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from serving.settings import Settings

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 300.0
LOG_DIR = Path("outputs/soak")  # kept after the run: a 5xx's traceback is in there


@dataclass(frozen=True)
class Target:
    """Where to send requests and, when known, which process to watch."""

    url: str
    pid: int | None = None
    log_path: Path | None = None


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of ``pid`` (None when no pid is known or the process is gone)."""
    if pid is None:
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(
    checkpoint: Path, workdir: Path, max_new_tokens: int, queue_size: int
) -> dict[str, str]:
    """This process's environment without any service setting, plus the soak's own."""
    settings = {name.upper() for name in Settings.model_fields}
    inherited = {k: v for k, v in os.environ.items() if k.upper() not in settings}
    return inherited | {
        "MODEL_DIR": str(checkpoint.resolve()),
        "VOICES_DIR": str(workdir / "voices"),
        "PROFILE_PATH": str(workdir / "no-profile.yaml"),  # the defaults, like a fresh install
        "MAX_NEW_TOKENS": str(max_new_tokens),
        "QUEUE_SIZE": str(queue_size),
        "LOG_LEVEL": "WARNING",
    }


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S:.0f} s; see {log_path}")


@contextmanager
def own_server(checkpoint: Path, max_new_tokens: int, queue_size: int) -> Iterator[Target]:
    """``python -m serving`` (the service's own HTTP limits included) on ``checkpoint`` in a
    scratch folder (no ``.env`` read), stopped and removed afterwards; its log stays in
    ``outputs/soak``."""
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(
            f"no checkpoint in {checkpoint}: make one with "
            f"`uv run --frozen fishbench make-checkpoint --preset tiny {checkpoint}`"
        )
    workdir = Path(tempfile.mkdtemp(prefix="fishbench-soak-"))
    port = _free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = (LOG_DIR / f"server-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log").resolve()
    env = server_env(checkpoint, workdir, max_new_tokens, queue_size)
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=workdir,
            env=env | {"HOST": "127.0.0.1", "PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        log.info("starting a server on %s (log: %s)", checkpoint, log_path)
        _wait_ready(process, url, log_path)
        yield Target(url, process.pid, log_path)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
