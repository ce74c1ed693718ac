"""One sweep per folder and one export at a time, held by real processes: a second sweep on a
folder in use is refused with the holder's PID, a lock whose holder died is taken over, and an
export waits for another sweep's export to finish."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.model.checkpoint import CheckpointFolder
from engine.profile import EngineProfile, Hardware
from harness.sweep.export import export_profile
from harness.sweep.store import SweepFolder
from harness.trial.record import BASELINE, OK, TrialRecord

pytestmark = pytest.mark.slow  # each test starts a process of its own

# A process holding a lock as a sweep holds one (flock, its PID inside) until its stdin ends.
HOLDER = """
import fcntl, os, sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.readline()
"""


@contextmanager
def holder(lock: Path) -> Iterator[subprocess.Popen]:
    """A live process holding ``lock``."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def sweep_in_use(reports: Path) -> Path:
    """The lock of sweep ``x`` under ``reports``, a sweep started there (its state saved)."""
    folder = reports / "sweeps" / "x"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text('{"sweep_id": "x"}')
    return folder / "sweep.lock"


def test_a_second_sweep_on_a_folder_in_use_is_refused_naming_its_pid(tmp_path: Path) -> None:
    with holder(sweep_in_use(tmp_path)) as other:
        for sweep_id, resume in ((None, "x"), (None, "last"), ("x", None)):
            with pytest.raises(ValueError) as refused:  # a UserError: one line, exit 2
                SweepFolder.open(tmp_path, sweep_id, resume)
            assert str(refused.value) == (
                f"sweep folder {tmp_path / 'sweeps' / 'x'} is in use by pid {other.pid}: "
                "wait for that sweep or stop it"
            )


def test_a_lock_left_by_a_killed_sweep_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with holder(sweep_in_use(tmp_path)) as dead:
        dead.kill()  # as kill -9 would: no chance to release anything
        dead.wait()
    lock_file = tmp_path / "sweeps" / "x" / "sweep.lock"
    assert lock_file.read_text().split() == [str(dead.pid)]
    with caplog.at_level(logging.INFO, "harness.sweep.lock"):
        folder, lock = SweepFolder.open(tmp_path, None, "x")
    with lock:
        assert folder.root == tmp_path / "sweeps" / "x"
        assert lock_file.read_text().split() == [str(os.getpid())]
        assert f"from pid {dead.pid}, which no longer holds it" in caplog.text
    assert lock_file.read_text() == ""  # released: the next sweep takes it silently


def test_an_export_waits_for_another_sweeps_export(tmp_path: Path, tiny_checkpoint: Path) -> None:
    reports = tmp_path / "reports"
    winner = TrialRecord("baseline", BASELINE, "h", {}, OK, metrics={"latency_p50_s": 1.0})
    checkpoint = CheckpointFolder.open(tiny_checkpoint)
    exported: list[Path] = []
    with holder(reports / "profiles" / ".export.lock") as other:
        export = threading.Thread(
            target=lambda: exported.extend(
                export_profile(
                    winner, Hardware.detect("cpu"), "cpu", checkpoint, 1.0, reports, "s", "latency"
                )
            )
        )
        export.start()
        export.join(timeout=5)
        assert export.is_alive(), "the export did not wait for the other sweep's"
        assert not (reports / "profile.yaml").exists()
        other.stdin.close()  # the other export ends
        export.join(timeout=60)
    assert exported == [reports / "profiles" / "cpu-s.yaml", reports / "profile.yaml"]
    assert EngineProfile.load(reports / "profile.yaml").provenance.hardware == "cpu"
