"""A sweep's candidates share one fp32 reference run: the first generates and saves it in the
sweep folder, the others read it instead of loading the fp32 model again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.trial.measure import fidelity_reference


def test_the_first_candidate_saves_the_reference_and_the_next_reads_it(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sweep" / "fidelity-reference-abc.pt"
    job = {
        "fidelity_reference": str(path),
        "checkpoint": str(tiny_checkpoint),
        "knobs": {"device": "cpu"},
        "reference_audio": None,
        "scenario": {
            "text": "One reference for all.",
            "reference_text": "",
            "fidelity_frames": 4,
            "seed": 0,
        },
    }
    caplog.set_level("INFO", logger="harness.trial.measure")
    generated = fidelity_reference(job)
    saved_at = path.stat().st_mtime_ns
    read = fidelity_reference(job)
    assert path.stat().st_mtime_ns == saved_at
    said = [r.getMessage() for r in caplog.records if r.name == "harness.trial.measure"]
    assert [line.split(" ")[2] for line in said] == ["generated", "read"]
    assert read.frames == generated.frames == 4
    assert torch.equal(read.sequence, generated.sequence)
    assert torch.equal(read.logits.slow_logits, generated.logits.slow_logits)
    assert torch.equal(read.logits.fast_logits, generated.logits.fast_logits)
    assert (read.audio == generated.audio).all()
