"""Exclusive locks on what a sweep must not share: its folder, the exported profile, a trial folder.

A lock is an ``flock`` on a lock file that holds its holder's PID. The kernel drops the lock when
its holder dies, however it dies (SIGKILL included), so a lock left by a dead process is simply
taken over; the file is never deleted (deleting it would let two processes lock two different
files of one name). Where ``fcntl`` is missing (Windows) nothing is locked and a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from engine.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

log = logging.getLogger(__name__)
POLL_S = 0.2


class LockBusy(UserError):
    """Another live process holds the lock (its PID is in the message)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def holder_pid(path: Path) -> int | None:
    """The PID written in a lock file, or None when there is none."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FileLock:
    """An exclusive lock on ``path``, held until ``release`` (or the end of a ``with`` block)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, path: Path, what: str, wait_s: float = 0.0, hint: str = "") -> FileLock:
        """Lock ``path`` for ``what``, waiting up to ``wait_s`` for its holder; ``LockBusy``
        names the holder's PID (and ``hint``, what to do) when it still holds it."""
        if fcntl is None:
            log.warning(
                "no file locks on this system (fcntl is POSIX-only): %s is not locked", what
            )
            return cls(path, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                pid = holder_pid(path)
                raise LockBusy(f"{what} is in use by pid {pid or '?'}{hint}", pid)
            time.sleep(POLL_S)
        stale = holder_pid(path)
        if stale is not None and stale != os.getpid():
            log.info("took over the lock on %s from pid %d, which no longer holds it", what, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Empty the file (no holder) and unlock it; safe to call twice."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
