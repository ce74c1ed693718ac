"""Shared fixtures: one tiny synthetic checkpoint and one real Piper recording per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_TEXT = "This is the reference recording of the speaker."


def pytest_configure(config: pytest.Config) -> None:
    """The start-up warnings the engine silences stay silent under pytest's own filters."""
    from engine.quiet import PYTEST_FILTERWARNINGS

    for line in PYTEST_FILTERWARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.synthetic import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0).path


@pytest.fixture(scope="session")
def piper_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real speech recording (Piper, 22.05 kHz WAV) and its transcript."""
    from harness.quality.piper_voice import write_speech

    return write_speech(
        tmp_path_factory.mktemp("speech") / "reference.wav", REFERENCE_TEXT
    ), REFERENCE_TEXT


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Path):
    """The default-profile engine on the tiny checkpoint (CPU, fp32)."""
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    return OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
