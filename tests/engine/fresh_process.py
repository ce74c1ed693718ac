"""A Python snippet run in a fresh interpreter, as a restarted service or a sweep trial starts:
only what the on-disk compile caches hold carries over from the test's own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.compile_cache import COMPILE_CACHE_ENV

REPO = Path(__file__).resolve().parents[2]


def compile_env(**extra: str) -> dict[str, str]:
    """This environment without inductor or compile-cache overrides, one compile thread (no
    worker pool: a 2-core CI box stays usable), ``extra`` on top, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR_")}
    env.pop(COMPILE_CACHE_ENV, None)
    env |= {"TORCHINDUCTOR_COMPILE_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_snippet(script: str, args: list[str], env: dict[str, str], timeout: float) -> Any:
    """The JSON the snippet prints on its last line; a failed run fails the test with its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
