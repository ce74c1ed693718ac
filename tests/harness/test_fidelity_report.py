"""Several profiles against one fp32 run: a profile that breaks is recorded, the rest measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.profile import EngineProfile
from harness.quality.fidelity_report import run_fidelity, to_markdown


def test_a_failing_profile_is_recorded_and_the_others_still_measured(
    tiny_checkpoint: Path,
) -> None:
    profiles = {
        "too-short-cache": EngineProfile(max_seq_len=256),
        "fp32": EngineProfile(),
    }
    meta, rows = run_fidelity(str(tiny_checkpoint), profiles, frames=260)
    assert meta["frames"] == 260 and meta["synthetic"]
    slow = meta["reference_flatness"]["slow"]
    # the tiny codec has 1024 semantic codes, plus <|im_end|>
    assert 0 < slow["entropy"] < slow["max_entropy"] == pytest.approx(math.log(1024 + 1))
    assert slow["uniform_kl"] == pytest.approx(slow["max_entropy"] - slow["entropy"])
    assert rows[0]["error"].startswith("ConfigError: the fidelity sequence (")
    assert rows[0]["error"].endswith("exceeds the profile's max_seq_len 256; measure fewer frames")
    assert rows[1]["slow_kl"] == 0.0 and rows[1]["passes_gates"]
    table = to_markdown(meta, rows)
    assert "| too-short-cache | cpu fp32 none | FAILED: " in table
    assert "| fp32 | cpu fp32 none | 0.00e+00 | 1.000 |" in table
