"""Trial bodies that fail the three ways a child process can: it hangs, it is killed, it raises.

A module of its own, importing nothing heavy, because spawned children import it by name.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

HANG, KILLED, RAISES = 3, 5, 7  # chunk_size values that select a fault in ``faulty_trial``


def hang(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(3600)
    return {}


def killed(job: dict[str, Any]) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    return {}


def raises(job: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("deliberate failure in the trial body")


def answers(job: dict[str, Any]) -> dict[str, Any]:
    return {"echo": job["value"]}


def script_env() -> dict[str, str]:
    """The environment of a test's own Python script that imports this module."""
    paths = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def faulty_trial(job: dict[str, Any]) -> dict[str, Any]:
    """The real trial, except for candidates whose chunk_size names a fault."""
    fault = {HANG: hang, KILLED: killed, RAISES: raises}.get(job["knobs"].get("chunk_size"))
    if fault is not None:
        return fault(job)
    from harness.trial.measure import run_trial

    return run_trial(job)
