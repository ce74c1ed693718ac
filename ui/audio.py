"""Streamed WAV in, small self-contained 16-bit WAV files out.

The service streams one WAV header followed by raw samples. A browser player fed chunk by chunk
needs each piece to be a complete file, so :class:`WavChunker` reads the header once and wraps
every whole-sample run of bytes that arrives in a header of its own.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True)
class WavFormat:
    """What the ``fmt `` chunk says about the samples that follow."""

    tag: int
    channels: int
    sample_rate: int
    bits: int

    @property
    def block_align(self) -> int:
        return self.channels * self.bits // 8


def parse_header(data: bytes | bytearray) -> tuple[WavFormat, int] | None:
    """The format and the offset of the first sample, or ``None`` until the header is complete."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("the service did not stream a WAV file")
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV stream has samples before its format chunk")
            return fmt, body
        if body + size > len(data):
            return None
        if chunk_id == b"fmt ":
            fmt = _format(bytes(data[body : body + size]))
        offset = body + size + size % 2
    return None


def _format(chunk: bytes) -> WavFormat:
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack_from("<H", chunk, 24)[0]
    if tag not in (PCM, IEEE_FLOAT):
        raise ValueError(f"unsupported WAV sample format {tag}")
    return WavFormat(tag, channels, rate, bits)


def to_pcm16(samples: bytes, fmt: WavFormat) -> bytes:
    """16-bit PCM or float samples as signed 16-bit little-endian PCM."""
    if fmt.tag == PCM and fmt.bits == 16:
        return samples
    if fmt.tag == IEEE_FLOAT and fmt.bits in (32, 64):
        floats = np.frombuffer(samples, dtype=f"<f{fmt.bits // 8}")
        return (np.clip(floats, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    raise ValueError(f"unsupported WAV samples: format {fmt.tag}, {fmt.bits} bits")


def wav_file(pcm16: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """A complete 16-bit WAV file holding ``pcm16``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm16)
    return buffer.getvalue()


class WavChunker:
    """Feed it the bytes of a streamed WAV; it returns playable WAV files as samples complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._format: WavFormat | None = None

    def feed(self, data: bytes) -> bytes | None:
        """A WAV file of every whole sample received so far and not yet returned, or ``None``."""
        self._buffer += data
        if self._format is None:
            parsed = parse_header(self._buffer)
            if parsed is None:
                return None
            self._format, start = parsed
            del self._buffer[:start]
        usable = len(self._buffer) - len(self._buffer) % self._format.block_align
        if usable == 0:
            return None
        samples = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        return wav_file(
            to_pcm16(samples, self._format), self._format.sample_rate, self._format.channels
        )


def wav_chunks(body: Iterable[bytes]) -> Iterator[bytes]:
    """Playable WAV files, one per piece of ``body`` that completed at least one sample."""
    chunker = WavChunker()
    for data in body:
        piece = chunker.feed(data)
        if piece is not None:
            yield piece
