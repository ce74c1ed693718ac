"""What the soak sends: a weighted mix of requests, each with the answer it must get."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import soundfile as sf

TEXTS = (
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Soak tests find the leaks that short tests miss.",
    "Please leave a message after the tone.",
)
REFERENCE_TEXT = "A short reference recording."
SPEECH_FORMATS = ("wav", "mp3", "flac", "opus")

Build = Callable[[random.Random], dict[str, Any]]
Check = Callable[[httpx.Response], str | None]


def reference_wav(seed: int, seconds: float = 2.0, rate: int = 16_000) -> bytes:
    """A voiced-looking signal (harmonics of a wobbling pitch), small enough to upload often."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    audio = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.1
    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def has_audio(response: httpx.Response) -> str | None:
    return None if len(response.content) > 64 else f"{len(response.content)} bytes of audio"


def is_wav(response: httpx.Response) -> str | None:
    return None if response.content[:4] == b"RIFF" else "not a WAV file"


def is_json(response: httpx.Response) -> str | None:
    try:
        response.json()
    except ValueError:
        return "not JSON"
    return None


def sse_done(response: httpx.Response) -> str | None:
    """The last event says the speech is complete (an ``error`` event means it failed)."""
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1]).get("type") if events else None
    return None if last == "speech.audio.done" else f"stream ended with {last!r}"


def error_body(response: httpx.Response) -> str | None:
    try:
        keys = set(response.json())
    except ValueError:
        return "error body is not JSON"
    return None if keys == {"error", "message", "type"} else f"error body keys {sorted(keys)}"


@dataclass(frozen=True)
class Kind:
    """One kind of request; ``bad`` ones must be refused with a 4xx."""

    name: str
    method: str
    path: str
    weight: int
    build: Build = field(default=lambda rng: {})
    check: Check = is_json
    bad: bool = False
    speech: bool = False


def _text(rng: random.Random) -> str:
    return rng.choice(TEXTS)


def _speech(fmt: str, voice: str = "default", stream_format: str = "audio") -> Build:
    def build(rng: random.Random) -> dict[str, Any]:
        body = {"input": _text(rng), "voice": voice, "response_format": fmt}
        return {"json": body | {"stream_format": stream_format}}

    return build


def _tts(references: list[bytes], stream: bool) -> Build:
    def build(rng: random.Random) -> dict[str, Any]:
        data = {"text": _text(rng), "reference_text": REFERENCE_TEXT, "stream": str(stream)}
        files = {"speaker_file": ("ref.wav", rng.choice(references), "audio/wav")}
        return {"data": data, "files": files}

    return build


def _fixed(**kwargs: Any) -> Build:
    return lambda rng: kwargs


def speech_kinds(references: list[bytes], voice_id: str | None) -> list[Kind]:
    """Requests that make audio: /tts with an upload (whole and streamed), OpenAI formats, SSE."""
    openai = "/v1/audio/speech"
    kinds = [
        Kind("tts", "POST", "/tts", 2, _tts(references, False), is_wav, speech=True),
        Kind("tts-stream", "POST", "/tts", 2, _tts(references, True), is_wav, speech=True),
        Kind("sse", "POST", openai, 2, _speech("pcm", stream_format="sse"), sse_done, speech=True),
        *(
            Kind(f"speech-{fmt}", "POST", openai, 1, _speech(fmt), has_audio, speech=True)
            for fmt in SPEECH_FORMATS
        ),
    ]
    if voice_id is not None:
        kinds.append(
            Kind("voice", "POST", openai, 1, _speech("pcm", voice_id), has_audio, speech=True)
        )
    return kinds


def other_kinds() -> list[Kind]:
    """Cheap reads, and bad requests that must get a 4xx with the error body."""
    garbage = {"speaker_file": ("ref.wav", b"not audio" * 64, "audio/wav")}
    bad = {
        "bad-empty-text": ("/tts", _fixed(data={"text": "   "})),
        "bad-voice": ("/v1/audio/speech", _fixed(json={"input": "hi", "voice": "nobody"})),
        "bad-format": ("/v1/audio/speech", _fixed(json={"input": "hi", "response_format": "x"})),
        "bad-audio": ("/tts", _fixed(data={"text": "hi"}, files=garbage)),
    }
    return [
        Kind("health", "GET", "/health", 2),
        Kind("metrics", "GET", "/metrics", 1),
        Kind("prometheus", "GET", "/metrics/prometheus", 1, check=lambda r: None),
        *(
            Kind(name, "POST", path, 1, build, error_body, bad=True)
            for name, (path, build) in bad.items()
        ),
    ]


def mix(references: list[bytes], voice_id: str | None) -> list[Kind]:
    return speech_kinds(references, voice_id) + other_kinds()
