"""A trial child that hangs, is killed or raises becomes a FAILED record with its reason (a killed
one by its signal and whether the kernel's OOM killer ran), and the sweep goes on to the next
trial. A child dies with its parent, and one that outlived it is killed before the next trial."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from faults import HANG, KILLED, RAISES, answers, faulty_trial, hang, killed, raises, script_env
from sweep_args import TinySweep

from harness.launchers.local import run_in_child
from harness.sweep import attempt
from harness.trial.record import FAILED, OK

# What a child that sends itself SIGKILL is recorded as, where the kernel counts OOM kills.
SELF_KILLED = (
    "child process died from SIGKILL (Killed): a kill -9 from a process, not out of memory "
    "(no OOM kill meanwhile)"
    if Path("/proc/vmstat").is_file() and "\noom_kill " in Path("/proc/vmstat").read_text()
    else "child process died from SIGKILL (Killed): out of memory or a kill -9 "
    "(this system does not count OOM kills)"
)


def test_a_child_answers_with_its_result(tmp_path: Path) -> None:
    outcome = run_in_child(answers, {"value": 42}, 60, tmp_path / "child.log")
    assert (outcome.result, outcome.error) == ({"echo": 42}, None)


def test_a_hanging_child_is_killed_at_the_timeout(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    outcome = run_in_child(hang, {}, 3, tmp_path / "child.log")
    assert outcome.result is None
    assert outcome.error.splitlines()[0] == "timed out after 3 s"
    assert time.perf_counter() - t0 < 45  # it did not wait for the hour-long sleep
    children = psutil.Process().children(recursive=True)
    assert not [c for c in children if "faults" in " ".join(c.cmdline())]  # nothing left behind


def test_a_child_killed_by_sigkill_says_so(tmp_path: Path) -> None:
    outcome = run_in_child(killed, {}, 60, tmp_path / "child.log")
    assert outcome.result is None
    assert outcome.error.splitlines()[0] == SELF_KILLED


def test_a_raising_child_sends_its_exception_and_traceback(tmp_path: Path) -> None:
    outcome = run_in_child(raises, {}, 60, tmp_path / "child.log")
    assert outcome.result is None
    assert outcome.error.splitlines()[0] == "RuntimeError: deliberate failure in the trial body"
    assert "Traceback" in outcome.error and "faults.py" in outcome.error
    assert "deliberate failure" in (tmp_path / "child.log").read_text()  # the child's log too


# A parent that runs one hanging trial child; the test kills it as ``kill -9`` kills a sweep.
PARENT = """
import sys
from pathlib import Path

from faults import hang
from harness.launchers.local import run_in_child

if __name__ == "__main__":
    run_in_child(hang, {}, 600, Path(sys.argv[1]))
"""
# A trial child that outlived its sweep, as the next trial finds it: holding the trial's lock
# (flock, its PID inside).
STALE = """
import fcntl, os, sys, time

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(600)
"""


def trial_children(parent: psutil.Process) -> list[psutil.Process]:
    """The parent's multiprocessing children (not its resource tracker)."""
    return [
        child
        for child in parent.children()
        if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in child.cmdline()
    ]


def wait_for_child(parent: psutil.Process, deadline_s: float = 120) -> psutil.Process:
    deadline = time.monotonic() + deadline_s
    while not (found := trial_children(parent)):
        assert time.monotonic() < deadline, "the trial child never started"
        time.sleep(0.2)
    return found[0]


@pytest.mark.slow
def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "child.log")], env=script_env()
    )
    children: list[psutil.Process] = []
    try:
        children.append(wait_for_child(psutil.Process(parent.pid)))
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"trial child {children[0].pid} still runs after its parent's SIGKILL"
    finally:
        parent.kill()
        for child in children:  # an orphan, when the test fails
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.mark.slow
def test_a_child_left_by_a_killed_sweep_is_killed_before_the_next_trial_runs(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "trial.lock"
    stale = subprocess.Popen(
        [sys.executable, "-c", STALE, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert stale.stdout.readline().strip() == "locked"
        outcome = run_in_child(answers, {"value": 1}, 60, tmp_path / "child.log", lock)
        assert stale.wait(timeout=60) == -signal.SIGKILL  # gone before the new child ran
        assert outcome.result == {"echo": 1}
        assert lock.read_text() == ""  # and the new child released the lock
    finally:
        stale.kill()
        stale.wait()


TIMEOUT_S = 40


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, tiny_sweep: TinySweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attempt, "run_trial", faulty_trial)
    outcome = tiny_sweep(
        tmp_path,
        "scenario.fixed_frames=8",
        "scenario.repeats=1",
        "scenario.max_repeats=1",
        f"grid.points=[{{chunk_size:{HANG}}},{{chunk_size:{KILLED}}},{{chunk_size:{RAISES}}}]",
        # The hanging trial's wait; the baseline (one repeat of 8 frames) needs a few seconds of
        # it, and several times that on a loaded machine.
        f"trial_timeout_s={TIMEOUT_S}",
    )
    records = {record.name: record for record in outcome.records}
    reasons = {
        name: record.reason.splitlines()[0]
        for name, record in records.items()
        if record.status == FAILED
    }
    assert reasons == {
        f"chunk_size={HANG}": f"timed out after {TIMEOUT_S} s",
        f"chunk_size={KILLED}": SELF_KILLED,
        f"chunk_size={RAISES}": "RuntimeError: deliberate failure in the trial body",
    }
    assert records["baseline"].status == OK  # and each failure came after another trial
    report = outcome.report_path.read_text()
    assert "## Failed trials" in report and "deliberate failure" in report
