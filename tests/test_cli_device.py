"""A profile that says ``device: cuda`` on a machine where torch sees no GPU stops the command with
one line and exit status 2, instead of running on the CPU under a warning.

The real CLI runs in a subprocess with ``CUDA_VISIBLE_DEVICES=""``: no GPU can exist here, and
hiding every GPU is exactly how such a run happens on a GPU machine too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cuda_profile_without_a_visible_gpu_exits_2_with_one_line(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "cuda.yaml"
    profile.write_text("device: cuda\n")
    out = tmp_path / "out.wav"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "synth", "--checkpoint", str(tiny_checkpoint)]
        + ["--text", "Hello.", "--profile", str(profile), "--fixed-frames", "2", "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [
        "fishbench synth: error: device: cuda, but CUDA_VISIBLE_DEVICES='' hides every GPU from "
        "torch; unset it or name a GPU to use one, or set device: cpu to run on the CPU on purpose"
    ]
    assert "Traceback" not in done.stderr
    assert not out.exists()
