"""A writer killed mid-way (kill -9 during POST /voices) leaves nothing behind after a restart."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serving.services.voices import VoiceLibrary

# Writes a voice whose codes never finish saving: the audio is on disk, then the process hangs.
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from serving.services.voices import VoiceLibrary

    class Stuck:
        def cpu(self):
            print("writing", flush=True)
            time.sleep(600)

    VoiceLibrary(sys.argv[1]).create(
        "victim", None, "hello", "user", np.zeros(44_100 * 5, np.float32), Stuck()
    )
    """
)


def _scratch(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@pytest.mark.slow  # a writer process killed with SIGKILL
def test_kill_9_mid_write_is_cleaned_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    (left,) = _scratch(tmp_path)
    assert left.startswith(".tmp-") and (tmp_path / left / "reference.wav").stat().st_size > 0

    with caplog.at_level(logging.WARNING, logger="serving.services.voices"):
        library = VoiceLibrary(tmp_path)

    assert _scratch(tmp_path) == [] and library.list() == []
    (line,) = [r.getMessage() for r in caplog.records if "unfinished voice" in r.getMessage()]
    assert left in line and "removed 1" in line


def test_a_live_writers_folder_is_kept(tmp_path: Path) -> None:
    """A second replica starting on the same library must not delete a write in progress."""
    live = tmp_path / f".tmp-{os.getppid()}-0123"
    live.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".trash-{dead}-4567"
    stale.mkdir()
    legacy = tmp_path / ".tmp-0a1b2c3d"
    legacy.mkdir()

    VoiceLibrary(tmp_path)

    assert _scratch(tmp_path) == [live.name]
