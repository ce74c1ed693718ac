"""With MODEL_DIR unset the service serves what the sweep measured, and says when it is noise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.profile import EngineProfile, Provenance
from serving.services.checkpoint_choice import (
    RELEASED_DIR,
    TINY_SYNTHETIC_DIR,
    choose_checkpoint,
    warn_if_synthetic,
)

MEASURED = Path("elsewhere/measured")
PROFILE = EngineProfile(provenance=Provenance(checkpoint_dir=str(MEASURED)))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _make(*folders: Path) -> None:
    for folder in folders:
        folder.mkdir(parents=True)


def test_model_dir_always_wins_even_when_missing() -> None:
    _make(RELEASED_DIR, MEASURED, TINY_SYNTHETIC_DIR)
    assert choose_checkpoint(Path("mine"), PROFILE) == (Path("mine"), "MODEL_DIR")


def test_released_folder_before_the_profiles() -> None:
    _make(RELEASED_DIR, MEASURED, TINY_SYNTHETIC_DIR)
    assert choose_checkpoint(None, PROFILE)[0] == RELEASED_DIR


def test_the_folder_the_profile_was_measured_on() -> None:
    _make(MEASURED, TINY_SYNTHETIC_DIR)
    assert choose_checkpoint(None, PROFILE)[0] == MEASURED


def test_tiny_synthetic_when_the_profile_names_none() -> None:
    _make(TINY_SYNTHETIC_DIR)
    assert choose_checkpoint(None, EngineProfile())[0] == TINY_SYNTHETIC_DIR
    assert choose_checkpoint(None, PROFILE)[0] == TINY_SYNTHETIC_DIR  # measured one deleted


def test_nothing_there_names_the_released_folder_for_the_startup_error() -> None:
    assert choose_checkpoint(None, PROFILE) == (
        RELEASED_DIR,
        "the released checkpoint folder (missing)",
    )


def test_one_warning_for_synthetic_weights(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.services.checkpoint_choice"):
        assert warn_if_synthetic(tiny_checkpoint)
        assert not warn_if_synthetic(tmp_path)
    (record,) = caplog.records
    assert "SYNTHETIC" in record.getMessage() and "noise" in record.getMessage()
