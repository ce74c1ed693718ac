"""WER pipeline on real speech: Piper speaks, offline Whisper (its own process) transcribes."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.quality.piper_voice import write_speech
from harness.quality.wer import measure_wer, word_error_rate
from harness.sweep.config import AsrConf

SENTENCE = "Please remember to water the plants on the balcony every Sunday morning."
UNRELATED = "Seven engineers measured the bridge before the storm arrived in town."

pytestmark = pytest.mark.slow


def test_offline_whisper_scores_piper_speech(tmp_path: Path) -> None:
    audio = write_speech(tmp_path / "sentence.wav", SENTENCE)
    scored = measure_wer(audio, SENTENCE, AsrConf(), tmp_path / "asr.log")
    assert scored["wer"] <= 0.1, scored["text"]
    assert word_error_rate(UNRELATED, scored["text"]) >= 0.5
