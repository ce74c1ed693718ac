"""A small sweep on the tiny checkpoint, as the sweep-level tests run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from sweep_args import TinySweep

from harness.sweep.compose import build_config
from harness.sweep.conclude import SweepOutcome
from harness.sweep.run import run_sweep

# Short trials: 16 frames, six timed repeats at most, 8 fidelity frames.
QUICK = (
    "scenario.fixed_frames=16",
    "scenario.max_repeats=6",
    "scenario.fidelity_frames=8",
    "trial_timeout_s=300",
)


@pytest.fixture(scope="session")
def tiny_sweep(tiny_checkpoint: Path, piper_reference: tuple[Path, str]) -> TinySweep:
    """``tiny_sweep(root, *overrides, text=None, tracking_uri=None)``: reports under ``root``,
    MLflow in ``root/mlflow.db`` unless ``tracking_uri`` names another store."""

    def sweep(
        root: Path, *overrides: str, text: str | None = None, tracking_uri: str | None = None
    ) -> SweepOutcome:
        store = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        cfg = build_config(
            [
                f"checkpoint={tiny_checkpoint}",
                f"reports_dir={root / 'reports'}",
                f"tracking.tracking_uri={store}",
                f"tracking.artifact_root={root / 'mlartifacts'}",
                f"scenario.reference_audio={piper_reference[0]}",
                *QUICK,
                *overrides,
            ]
        )
        if text is not None:
            cfg.scenario.text = text
        cfg.scenario.reference_text = piper_reference[1]
        return run_sweep(cfg, Console(width=200))

    return sweep
