"""A trial child that hangs, is killed or raises becomes a FAILED record with its reason, and the
sweep goes on to the next trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from faults import HANG, KILLED, RAISES, answers, faulty_trial, hang, killed, raises

from harness.launcher import run_in_child
from harness.sweep import trials
from harness.sweep.runner import SweepOutcome
from harness.trial.record import FAILED, OK

TinySweep = Callable[..., SweepOutcome]  # the tiny_sweep fixture (tests/harness/conftest.py)


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
    assert outcome.error.splitlines()[0] == (
        "child process died from SIGKILL (killed: out of memory?)"
    )


def test_a_raising_child_sends_its_exception_and_traceback(tmp_path: Path) -> None:
    outcome = run_in_child(raises, {}, 60, tmp_path / "child.log")
    assert outcome.result is None
    assert outcome.error.splitlines()[0] == "RuntimeError: deliberate failure in the trial body"
    assert "Traceback" in outcome.error and "faults.py" in outcome.error
    assert "deliberate failure" in (tmp_path / "child.log").read_text()  # the child's log too


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, tiny_sweep: TinySweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trials, "run_trial", faulty_trial)
    outcome = tiny_sweep(
        tmp_path,
        "scenario.fixed_frames=8",
        "scenario.repeats=6",
        f"grid.points=[{{chunk_size:{HANG}}},{{chunk_size:{KILLED}}},{{chunk_size:{RAISES}}}]",
        "trial_timeout_s=20",  # the baseline (8 frames) took 12.6 s here before bytecode caching
    )
    records = {record.name: record for record in outcome.records}
    reasons = {
        name: record.reason.splitlines()[0]
        for name, record in records.items()
        if record.status == FAILED
    }
    assert reasons == {
        f"chunk_size={HANG}": "timed out after 20 s",
        f"chunk_size={KILLED}": "child process died from SIGKILL (killed: out of memory?)",
        f"chunk_size={RAISES}": "RuntimeError: deliberate failure in the trial body",
    }
    assert records["baseline"].status == OK  # and each failure came after another trial
    report = outcome.report_path.read_text()
    assert "## Failed trials" in report and "deliberate failure" in report
