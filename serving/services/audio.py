"""Float audio -> bytes of a response format, incrementally, with one header per stream.

Streams are encoded by one encoder fed chunk after chunk, so the concatenated output is a single
valid file: streamed WAV carries a header with unknown (0xFFFFFFFF) sizes, PCM is raw s16le, and
mp3 / opus (Ogg) / aac (ADTS) go through PyAV's bundled ffmpeg encoders as the audio comes.

FLAC is the exception: its bytes come only at the end of a stream, with the exact sample count and
MD5 in STREAMINFO. A streamed FLAC header can only say "length unknown" (total samples 0, which
the spec allows and ffmpeg / sox accept), but libsndfile turns 0 into SF_COUNT_MAX, so
``soundfile.read`` fails ("array is too big"), and an overstated count fails its final seek; only
the exact count works, and that is known once generation has ended.
"""

from __future__ import annotations

import io
import struct
from typing import Protocol

import av
import numpy as np
import torch
import torchaudio.functional as taf

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "aac": "audio/aac",
}

# format -> (container, encoder, output sample rate or None for the input rate)
_AV_FORMATS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48_000),
    "flac": ("flac", "flac", None),
    "aac": ("adts", "aac", None),
}
_UNKNOWN_SIZE = 0xFFFFFFFF
# Formats whose header must carry the exact length to be readable everywhere (see above).
_WHOLE_ONLY = frozenset({"flac"})


class AudioEncoder(Protocol):
    """Turns successive float32 mono chunks into successive bytes of one file."""

    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


def to_pcm16(samples: np.ndarray) -> bytes:
    """Little-endian signed 16-bit PCM, clipped rather than wrapped."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (np.round(clipped * 32767.0)).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM16 mono header; ``None`` sizes mark a stream of unknown length."""
    data = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data)


class PcmEncoder:
    """Raw s16le; with ``header``, a streaming WAV header precedes the first chunk."""

    def __init__(self, sample_rate: int, header: bool = False) -> None:
        self._header = wav_header(sample_rate, None) if header else b""

    def encode(self, samples: np.ndarray) -> bytes:
        head, self._header = self._header, b""
        return head + to_pcm16(samples)

    def finish(self) -> bytes:
        head, self._header = self._header, b""
        return head


class _Sink:
    """A write-only file for PyAV: being unseekable keeps muxers from rewriting headers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class AvEncoder:
    """An ffmpeg encoder + muxer fed float32 chunks; PyAV resamples and re-frames as needed."""

    def __init__(self, fmt: str, sample_rate: int, seekable: bool = False) -> None:
        container, codec, rate = _AV_FORMATS[fmt]
        options = {"page_duration": "100000"} if container == "ogg" else {}
        # Seekable output (whole files) lets muxers write final sizes, e.g. FLAC's sample count.
        self._sink: _Sink | io.BytesIO = io.BytesIO() if seekable else _Sink()
        self._container = av.open(self._sink, mode="w", format=container, options=options)
        self._stream = self._container.add_stream(codec, rate=rate or sample_rate, layout="mono")
        self._rate = sample_rate
        self._pts = 0

    def _mux(self, frame: av.AudioFrame | None) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take() if isinstance(self._sink, _Sink) else b""

    def encode(self, samples: np.ndarray) -> bytes:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += samples.size
        return self._mux(frame)

    def finish(self) -> bytes:
        tail = self._mux(None)
        self._container.close()
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return tail + self._sink.take()


def make_encoder(fmt: str, sample_rate: int) -> AudioEncoder:
    """A streaming encoder for ``fmt``; a FLAC one returns every byte from ``finish``."""
    if fmt in ("wav", "pcm"):
        return PcmEncoder(sample_rate, header=fmt == "wav")
    return AvEncoder(fmt, sample_rate, seekable=fmt in _WHOLE_ONLY)


def encode_all(fmt: str, samples: np.ndarray, sample_rate: int) -> bytes:
    """A whole file; WAV gets exact sizes in its header since the length is known."""
    if fmt == "wav":
        data = to_pcm16(samples)
        return wav_header(sample_rate, len(data)) + data
    if fmt == "pcm":
        return to_pcm16(samples)
    encoder = AvEncoder(fmt, sample_rate, seekable=True)
    encoder.encode(samples)
    return encoder.finish()


STRETCH_FFT, STRETCH_HOP = 2048, 512  # librosa's time_stretch framing: 46 ms windows at 44.1 kHz
_STRETCH_MIN_SAMPLES = 2 * STRETCH_FFT  # below two STFT windows there is nothing to stretch


def change_speed(samples: np.ndarray, speed: float) -> np.ndarray:
    """Tempo change without pitch change: STFT, phase vocoder, inverse STFT.

    The same algorithm, framing and zero edge padding as ``librosa.effects.time_stretch`` (torch's
    default reflect padding measured a quarter of librosa's loudness at speed 0.5), in torch ops:
    librosa's numba kernels compile on a fresh install's first call (about 20 s on two cores, seen
    in CI), which would stall the first request that asks for another speed.
    """
    if speed == 1.0 or samples.size < _STRETCH_MIN_SAMPLES:
        return samples
    wave = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    window = torch.hann_window(STRETCH_FFT)
    spec = torch.stft(
        wave, STRETCH_FFT, STRETCH_HOP, window=window, pad_mode="constant", return_complex=True
    )
    advance = torch.linspace(0, torch.pi * STRETCH_HOP, spec.shape[-2])[:, None]
    stretched = taf.phase_vocoder(spec, speed, advance)
    length = round(samples.size / speed)
    return torch.istft(stretched, STRETCH_FFT, STRETCH_HOP, window=window, length=length).numpy()
