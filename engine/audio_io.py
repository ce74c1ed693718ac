"""Reference audio in: any common container decoded, down-mixed and resampled to 44.1 kHz.

Decoding is bounded for hostile input (a few hundred KB of FLAC can hold hours of silence): the
length a container declares is checked before any sample is decoded, then samples are decoded block
by block and decoding stops as soon as they pass the limit, so at most the limit plus one block is
ever held. Declared lengths can be absent (streamed FLAC) or estimated (MP3, ADTS AAC), which is why
the block count, not the header, is what enforces the limit.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from engine.errors import RequestError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import InputContainer

log = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
WHISPER_RATE = 16_000  # what faster-whisper transcribes; ASR input is resampled to it
MAX_REFERENCE_SECONDS = 90.0
MIN_REFERENCE_SECONDS = 0.25
MAX_SOURCE_RATE = 192_000
"""Highest accepted input rate: bounds the samples the duration limit lets through."""

_BLOCK_SAMPLES = 1 << 16  # samples per read across all channels (256 KiB of float32)
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: the header states no length
# A length estimated from the bit rate can be off by tens of percent; only a declared length
# this far over the limit is refused before decoding, below it the decoded count decides.
_ESTIMATE_SLACK = 1.5

ReferenceAudio = bytes | str | Path | np.ndarray
"""A reference recording: encoded bytes, a file path, or 44.1 kHz float samples."""


class AudioInputError(RequestError):
    """Reference audio that cannot be used, with a reason a user can act on."""


class _Samples:
    """Mono float32 blocks at the source rate, refused as soon as they pass ``max_seconds``."""

    def __init__(self, rate: int | None, max_seconds: float) -> None:
        if not rate or rate <= 0:
            raise AudioInputError("the audio declares no sample rate")
        if rate > MAX_SOURCE_RATE:
            raise AudioInputError(
                f"sample rate {rate} Hz is above the supported {MAX_SOURCE_RATE} Hz"
            )
        self.rate = rate
        self.max_seconds = max_seconds
        self.blocks: list[np.ndarray] = []
        self.count = 0

    def declared(self, seconds: float | None, *, exact: bool) -> None:
        """Refuse before decoding when the container's own length is over the limit."""
        if seconds is not None and seconds > self.max_seconds * (1 if exact else _ESTIMATE_SLACK):
            raise AudioInputError(
                f"reference audio is {seconds:.1f} s; the limit is {self.max_seconds:g} s"
            )

    def add(self, mono: np.ndarray) -> None:
        self.blocks.append(mono)
        self.count += len(mono)
        if self.count / self.rate > self.max_seconds:
            self.blocks.clear()
            raise AudioInputError(
                f"reference audio is longer than {self.max_seconds:g} s; "
                f"the limit is {self.max_seconds:g} s"
            )

    def join(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.blocks)


def _decode_soundfile(data: bytes, max_seconds: float) -> _Samples:
    with sf.SoundFile(io.BytesIO(data)) as audio:
        samples = _Samples(audio.samplerate, max_seconds)
        if audio.frames != _UNKNOWN_FRAMES:
            samples.declared(audio.frames / audio.samplerate, exact=audio.format != "MP3")
        block = max(1, _BLOCK_SAMPLES // audio.channels)
        while len(frames := audio.read(block, dtype="float32", always_2d=True)):
            samples.add(frames.mean(axis=1))
    return samples


def _declared_seconds(container: InputContainer, stream: AudioStream) -> float | None:
    """The stream's or else the container's length in seconds; None when neither states one."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _decode_av(data: bytes, max_seconds: float) -> _Samples:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise AudioInputError("the file has no audio stream")
        stream = container.streams.audio[0]
        samples = _Samples(stream.rate, max_seconds)
        samples.declared(_declared_seconds(container, stream), exact=False)
        resampler = av.AudioResampler(format="fltp", layout="mono")
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                samples.add(out.to_ndarray()[0])
        for out in resampler.resample(None):
            samples.add(out.to_ndarray()[0])
    return samples


def _decode(data: bytes, max_seconds: float) -> _Samples:
    """libsndfile first (wav, flac, ogg, mp3), PyAV for the rest (m4a, webm, aac, ...)."""
    try:
        return _decode_soundfile(data, max_seconds)
    except AudioInputError:
        raise
    except Exception as exc:  # any libsndfile failure means "try PyAV"
        log.debug("libsndfile cannot decode the reference (%s); trying PyAV", exc)
    try:
        return _decode_av(data, max_seconds)
    except AudioInputError:
        raise
    except Exception as exc:
        raise AudioInputError(f"not a readable audio file ({type(exc).__name__})") from exc


def decode_audio(data: bytes, *, max_seconds: float = MAX_REFERENCE_SECONDS) -> np.ndarray:
    """Decode audio bytes (wav, flac, ogg, mp3, ...) to mono float32 at 44.1 kHz."""
    if not data:
        raise AudioInputError("the audio file is empty")
    samples = _decode(data, max_seconds)
    mono, rate = samples.join(), samples.rate
    if mono.size == 0:
        raise AudioInputError("the audio file contains no samples")
    duration = len(mono) / rate
    if duration < MIN_REFERENCE_SECONDS:
        raise AudioInputError(
            f"reference audio is {duration:.2f} s; at least {MIN_REFERENCE_SECONDS} s needed"
        )
    resampled = torch.from_numpy(np.ascontiguousarray(mono))
    if rate != SAMPLE_RATE:
        resampled = AF.resample(resampled, rate, SAMPLE_RATE)
    if not torch.isfinite(resampled).all():
        raise AudioInputError("the audio contains NaN or infinite samples")
    return resampled.numpy().astype(np.float32)


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
