"""Reference audio in: any common container decoded, down-mixed and resampled to 44.1 kHz."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from engine.errors import RequestError

SAMPLE_RATE = 44_100
MAX_REFERENCE_SECONDS = 90.0
MIN_REFERENCE_SECONDS = 0.25

ReferenceAudio = bytes | str | Path | np.ndarray
"""A reference recording: encoded bytes, a file path, or 44.1 kHz float samples."""


class AudioInputError(RequestError):
    """Reference audio that cannot be used, with a reason a user can act on."""


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.T, rate


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise AudioInputError("the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="mono")
        chunks = [
            out.to_ndarray()
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        rate = stream.rate
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def decode_audio(data: bytes, *, max_seconds: float = MAX_REFERENCE_SECONDS) -> np.ndarray:
    """Decode audio bytes (wav, flac, ogg, mp3, ...) to mono float32 at 44.1 kHz."""
    if not data:
        raise AudioInputError("the audio file is empty")
    try:
        channels, rate = _decode_soundfile(data)
    except Exception:
        try:
            channels, rate = _decode_av(data)
        except AudioInputError:
            raise
        except Exception as exc:
            raise AudioInputError(f"not a readable audio file ({type(exc).__name__})") from exc
    if channels.size == 0:
        raise AudioInputError("the audio file contains no samples")
    duration = channels.shape[1] / rate
    if duration > max_seconds:
        raise AudioInputError(
            f"reference audio is {duration:.1f} s; the limit is {max_seconds:.0f} s"
        )
    if duration < MIN_REFERENCE_SECONDS:
        raise AudioInputError(
            f"reference audio is {duration:.2f} s; at least {MIN_REFERENCE_SECONDS} s needed"
        )
    mono = torch.from_numpy(np.ascontiguousarray(channels.mean(axis=0)))
    if rate != SAMPLE_RATE:
        mono = AF.resample(mono, rate, SAMPLE_RATE)
    if not torch.isfinite(mono).all():
        raise AudioInputError("the audio contains NaN or infinite samples")
    return mono.numpy().astype(np.float32)


def read_audio_file(path: str | Path, *, max_seconds: float = MAX_REFERENCE_SECONDS) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path} does not exist")
    try:
        return decode_audio(path.read_bytes(), max_seconds=max_seconds)
    except AudioInputError as exc:
        raise AudioInputError(f"{path.name}: {exc}") from exc


def load_reference(reference: ReferenceAudio) -> np.ndarray:
    """Reference audio given as bytes, a file path or 44.1 kHz float samples -> float32 samples."""
    if isinstance(reference, np.ndarray):
        return np.ascontiguousarray(reference, dtype=np.float32)
    if isinstance(reference, bytes):
        return decode_audio(reference)
    return read_audio_file(reference)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio, dtype=np.float32), sample_rate, subtype="PCM_16")
    return path
