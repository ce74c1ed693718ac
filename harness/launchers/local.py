"""Run a function in a freshly spawned process with a timeout, optimum-benchmark style.

A fresh interpreter per trial keeps allocator state, compile caches and CUDA context from leaking
between trials, and turns an OOM kill, segfault or hang into a FAILED trial instead of a dead
sweep. The child sends back a plain dict or a traceback string; its stdout/stderr go to a log file
so its warnings do not tear through the parent's progress bar.

The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux, a thread watching the parent
elsewhere), so a sweep killed even by SIGKILL leaves no trial running. While it runs it holds a
lock (``lock_path``) naming it; should one outlive its parent anyway, the next trial in its folder
kills it first (``reclaim``), so a resumed trial never shares a folder with a stale child.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from harness.sweep.lock import FileLock, LockBusy

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.5  # where PR_SET_PDEATHSIG is missing: how often the child checks its parent
STALE_EXIT_S = 30.0  # how long a killed stale child may take to release its lock
ORPHANED = 3  # exit code of a child whose parent died before it could be tied to it


@dataclass(frozen=True)
class ChildOutcome:
    """A finished child: its result dict, or the error text explaining why there is none.

    The error's first line is always the one-line reason (exception type and message, timeout or
    death); a traceback or the tail of the child's log follows.
    """

    result: dict[str, Any] | None
    error: str | None
    wall_s: float


def _die_with_parent(parent: int) -> str:
    """Tie this child's life to its parent's (the sweep, or a Ray worker): a parent killed even
    by SIGKILL must not leave its trial running for up to ``trial_timeout_s``. Says how."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(ORPHANED)
            return "it dies with its parent (PR_SET_PDEATHSIG)"
        reason = f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}"
    else:
        reason = f"PR_SET_PDEATHSIG is Linux-only, this is {sys.platform}"
    watch = threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True)
    watch.start()
    return f"it checks its parent every {PARENT_POLL_S:g} s and exits without it ({reason})"


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(ORPHANED)


def _child(
    target: Callable[[dict[str, Any]], dict[str, Any]],
    job: dict[str, Any],
    conn: Any,
    log_path: str,
    parent: int,
    lock_path: str | None,
) -> None:
    tie = _die_with_parent(parent)
    with open(log_path, "a", buffering=1) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        logging.getLogger(__name__).info("child pid %d of pid %d: %s", os.getpid(), parent, tie)
        lock = None
        try:
            if lock_path is not None:  # free: the parent reclaimed it just before
                lock = FileLock.take(Path(lock_path), f"trial {Path(lock_path).stem}", STALE_EXIT_S)
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
            if lock is not None:
                lock.release()


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (so that PID is no reused one)."""
    try:
        return any(Path(f.path) == path for f in psutil.Process(pid).open_files())
    except psutil.Error:
        return False


def reclaim(lock_path: Path) -> None:
    """Make sure no trial child of an earlier, killed sweep still works under ``lock_path``: one
    that outlived its parent (it should have died with it) is killed and waited for."""
    what = f"trial {lock_path.stem}"
    try:
        FileLock.take(lock_path, what).release()
        return
    except LockBusy as busy:
        stale = busy.pid
    if stale is not None and _holds(stale, lock_path.resolve()):
        log.warning("killing pid %d, a trial child that outlived its sweep (%s)", stale, lock_path)
        with contextlib.suppress(ProcessLookupError):
            os.kill(stale, signal.SIGKILL)
    FileLock.take(lock_path, what, STALE_EXIT_S).release()


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (``oom_kill`` in
    ``/proc/vmstat``: Linux 4.13 on, cgroup OOM kills included), or None where it is not known."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def death_reason(exitcode: int | None, oom_before: int | None, oom_after: int | None) -> str:
    """Why a child ended without a result: the signal by name and, for SIGKILL (the OOM killer's
    signal, and ``kill -9``'s), whether the kernel's OOM killer ran meanwhile."""
    if exitcode is None or exitcode >= 0:
        return f"child process exited with code {exitcode} without a result"
    sig = signal.Signals(-exitcode)
    reason = f"child process died from {sig.name} ({signal.strsignal(sig)})"
    if sig != signal.SIGKILL:
        return reason
    if oom_before is None or oom_after is None:
        return f"{reason}: out of memory or a kill -9 (this system does not count OOM kills)"
    if oom_after > oom_before:
        kills = oom_after - oom_before
        return f"{reason}: out of memory (the kernel's OOM killer killed {kills} meanwhile)"
    return f"{reason}: a kill -9 from a process, not out of memory (no OOM kill meanwhile)"


def run_in_child(
    target: Callable[[dict[str, Any]], dict[str, Any]],
    job: dict[str, Any],
    timeout_s: float,
    log_path: Path,
    lock_path: Path | None = None,
) -> ChildOutcome:
    """Call ``target(job)`` in a spawned process; never raises for what happens inside it.

    With ``lock_path`` the child holds that lock while it runs (a stale holder is killed
    first), so that what it writes is never shared with a child of an earlier, killed sweep."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if lock_path is not None:
        reclaim(lock_path)
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    lock = str(lock_path) if lock_path else None
    args = (target, job, send, str(log_path), os.getpid(), lock)
    proc = ctx.Process(target=_child, args=args, daemon=True)
    start, oom_before = time.perf_counter(), oom_kills()
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
    if result is None and error is None:  # the child died: say how, with what the kernel knows
        error = death_reason(proc.exitcode, oom_before, oom_kills())
    if result is None and "Traceback" not in error:
        error = f"{error}\n--- last lines of {log_path.name} ---\n{_log_tail(log_path)}"
    return ChildOutcome(result, error, time.perf_counter() - start)


def _receive(conn: Any, proc: Any, timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    """The child's answer; ``(None, None)`` when it died without one."""
    if not conn.poll(timeout_s):
        proc.kill()
        return None, f"timed out after {timeout_s:.0f} s"
    try:
        return conn.recv()
    except EOFError:
        return None, None
