"""Sweeps as separate processes on one folder: while a sweep runs, a second one (``fishbench
sweep``) is refused at once with one line naming the first's PID; ``kill -9`` of the first leaves
no trial child running; resuming takes the dead sweep's lock over and runs the trial afresh, in a
folder no stale child writes to."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from faults import script_env
from rich.console import Console
from sweep_args import SHORT

from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome
from harness.sweep.run import run_sweep

pytestmark = pytest.mark.slow
# A sweep whose trials hang (faults.hang) until killed: it holds its folder for as long as needed.
HANGING_SWEEP = """
import sys

from faults import hang
from harness.sweep import attempt
from harness.sweep.run import main

if __name__ == "__main__":
    attempt.run_trial = hang
    sys.exit(main(sys.argv[1:]))
"""
FAST = ("grid.points=[]", *SHORT)  # the baseline alone
START_S = 300  # a sweep process's start on a busy machine: imports, checkpoint hash, MLflow store
REFUSED_S = 120  # what the second sweep may take to refuse


@dataclass
class Held:
    """The first sweep, its trial child, and the overrides every sweep here shares."""

    sweep: subprocess.Popen
    child: psutil.Process
    overrides: list[str]
    folder: Path


def _trial_child(sweep: psutil.Process) -> psutil.Process | None:
    for child in sweep.children():
        cmdline = " ".join(child.cmdline())
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            return child
    return None


def _wait_for_trial(sweep: subprocess.Popen) -> psutil.Process:
    deadline = time.monotonic() + START_S
    while (child := _trial_child(psutil.Process(sweep.pid))) is None:
        assert sweep.poll() is None, f"the first sweep exited with {sweep.returncode}"
        assert time.monotonic() < deadline, "the first sweep never started its trial"
        time.sleep(0.5)
    return child


@pytest.fixture(scope="module")
def held(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    piper_reference: tuple[Path, str],
) -> Iterator[Held]:
    root = tmp_path_factory.mktemp("processes")
    overrides = [
        f"checkpoint={tiny_checkpoint}",
        f"reports_dir={root / 'reports'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'mlartifacts'}",
        f"scenario.reference_audio={piper_reference[0]}",
        f"scenario.reference_text='{piper_reference[1]}'",
        *FAST,
    ]
    script = root / "hanging_sweep.py"
    script.write_text(HANGING_SWEEP)
    with open(root / "first.log", "w") as sink:
        sweep = subprocess.Popen(
            [sys.executable, str(script), "sweep_id=held", "trial_timeout_s=600", *overrides],
            env=script_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    children: list[psutil.Process] = []
    try:
        children.append(_wait_for_trial(sweep))
        yield Held(sweep, children[0], overrides, root / "reports" / "sweeps" / "held")
    finally:
        sweep.kill()
        sweep.wait()
        for child in children:  # an orphan, when a test fails
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture(scope="module")
def refused(held: Held) -> tuple[subprocess.CompletedProcess, float]:
    """``fishbench sweep resume=held`` while the first sweep runs, and how long it took."""
    start = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "harness.cli", "sweep", "resume=held", *held.overrides],
        capture_output=True,
        text=True,
        timeout=REFUSED_S,
    )
    return second, time.monotonic() - start


@pytest.fixture(scope="module")
def orphans(held: Held, refused: tuple) -> list[psutil.Process]:
    """The first sweep killed as ``kill -9`` kills it: what is left of its trial child."""
    held.sweep.kill()
    held.sweep.wait()
    _, alive = psutil.wait_procs([held.child], timeout=30)
    return alive


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def resumed(held: Held, orphans: list) -> tuple[SweepOutcome, list[str]]:
    """``resume=held`` after the kill, in this process, with what it logged about locks."""
    messages, logger = Messages(), logging.getLogger("harness.sweep.lock")
    logger.addHandler(messages)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cfg = build_config(["resume=held", *held.overrides])
        return run_sweep(cfg, Console(width=200)), messages.lines
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)


def test_a_second_sweep_on_a_folder_in_use_is_refused_with_the_holders_pid(
    held: Held, refused: tuple[subprocess.CompletedProcess, float]
) -> None:
    second, seconds = refused
    lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    assert second.returncode != 0, lines
    assert seconds < REFUSED_S
    assert len(lines) == 1, lines
    assert f"is in use by pid {held.sweep.pid}" in lines[0]
    assert held.sweep.poll() is None and held.child.is_running()  # the first goes on


def test_a_killed_sweep_leaves_no_trial_child_running(orphans: list[psutil.Process]) -> None:
    assert orphans == [], f"trial child {orphans} outlived its sweep's SIGKILL"


def test_resuming_takes_the_dead_sweeps_lock_and_reruns_its_trial_afresh(
    held: Held, resumed: tuple[SweepOutcome, list[str]]
) -> None:
    outcome, messages = resumed
    assert any(f"from pid {held.sweep.pid}, which no longer holds it" in m for m in messages)
    (baseline,) = outcome.records
    assert baseline.ok, baseline.reason
    trial_log = (held.folder / "trials" / baseline.config_hash / "trial.log").read_text()
    children = [line for line in trial_log.splitlines() if "child pid" in line]
    assert len(children) == 1 and f"child pid {held.child.pid} " not in children[0]
    assert "BrokenPipeError" not in trial_log
    assert (held.folder / "sweep.lock").read_text() == ""  # released when the sweep ended
