"""Run a function in a freshly spawned process with a timeout, optimum-benchmark style.

A fresh interpreter per trial keeps allocator state, compile caches and CUDA context from leaking
between trials, and turns an OOM kill, segfault or hang into a FAILED trial instead of a dead
sweep. The child sends back a plain dict or a traceback string; its stdout/stderr go to a log file
so its warnings do not tear through the parent's progress bar.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class ChildOutcome:
    """A finished child: its result dict, or the error text explaining why there is none.

    The error's first line is always the one-line reason (exception type and message, timeout or
    death); a traceback or the tail of the child's log follows.
    """

    result: dict[str, Any] | None
    error: str | None
    wall_s: float


def _child(
    target: Callable[[dict[str, Any]], dict[str, Any]],
    job: dict[str, Any],
    conn: Any,
    log_path: str,
) -> None:
    with open(log_path, "a", buffering=1) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        try:
            conn.send((target(job), None))
        except BaseException as exc:
            message = str(exc).strip().splitlines()
            text = (
                f"{type(exc).__name__}: {message[0] if message else ''}\n\n{traceback.format_exc()}"
            )
            logging.getLogger(__name__).error("child failed:\n%s", text)
            conn.send((None, text))
        finally:
            conn.close()


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (killed: out of memory?)" if exitcode == -signal.SIGKILL else ""
        return f"child process died from {name}{hint}"
    return f"child process exited with code {exitcode} without a result"


def run_in_child(
    target: Callable[[dict[str, Any]], dict[str, Any]],
    job: dict[str, Any],
    timeout_s: float,
    log_path: Path,
) -> ChildOutcome:
    """Call ``target(job)`` in a spawned process; never raises for what happens inside it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(target, job, send, str(log_path)), daemon=True)
    start = time.perf_counter()
    proc.start()
    send.close()  # the child holds the only writer, so its death reads as EOF here
    try:
        result, error = _receive(receive, proc, timeout_s)
    finally:
        receive.close()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if result is None and "Traceback" not in error:
        error = f"{error}\n--- last lines of {log_path.name} ---\n{_log_tail(log_path)}"
    return ChildOutcome(result, error, time.perf_counter() - start)


def _receive(conn: Any, proc: Any, timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    if not conn.poll(timeout_s):
        proc.kill()
        return None, f"timed out after {timeout_s:.0f} s"
    try:
        return conn.recv()
    except EOFError:
        proc.join(10)
        return None, _death_reason(proc.exitcode)
