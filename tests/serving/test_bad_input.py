"""Bad input gets a 4xx with the stable error body and a message that says what is wrong."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.service

LONG_TEXT = "a" * 100_000


def sine_wav(seconds: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.2 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


Request = tuple[str, str, dict[str, Any]]


def tts(files: dict[str, Any] | None = None, **data: str) -> Request:
    return "POST", "/tts", {"data": data, "files": files}


def speech(**body: Any) -> Request:
    return "POST", "/v1/audio/speech", {"json": {"input": "hi", **body}}


def upload(data: bytes, name: str = "ref.wav") -> dict[str, Any]:
    return {"speaker_file": (name, data, "application/octet-stream")}


NEW_VOICE = (
    "POST",
    "/voices",
    {"data": {"voice_id": "../evil"}, "files": {"audio": ("a.wav", b"")}},
)

CASES: dict[str, tuple[Request, int, str]] = {
    "empty text": (tts(text="   "), 422, "empty"),
    "missing text": (tts(text=""), 422, "text"),
    "zero-width only": (tts(text="\u200b\u2060\u200b"), 422, "nothing to speak"),
    "zero-width only openai": (speech(input="\ufeff\u200b"), 422, "nothing to speak"),
    "NUL only openai": (speech(input="\x00\x00"), 422, "nothing to speak"),
    "zero-width only normalize": (
        ("POST", "/normalize", {"json": {"text": "\u200b\u200c"}}),
        422,
        "nothing to speak",
    ),
    "100k characters": (tts(text=LONG_TEXT), 422, "100000 characters"),
    "100k characters openai": (speech(input=LONG_TEXT), 422, "100000 characters"),
    "non-audio upload": (tts(upload(b"not audio" * 64, "a.txt"), text="hi"), 422, "not a readable"),
    "oversize upload": (tts(upload(b"\0" * (3 * 2**20)), text="hi"), 413, "MAX_UPLOAD_MB"),
    "overlong reference": (tts(upload(sine_wav(100, 8_000)), text="hi"), 422, "limit is 90 s"),
    "unknown voice": (tts(text="hi", voice_id="nobody"), 404, "nobody"),
    "unknown voice openai": (speech(voice="nobody"), 404, "nobody"),
    "traversal voice id": (tts(text="hi", voice_id="../etc"), 422, "invalid voice id"),
    "traversal voice openai": (speech(voice="../../x"), 422, "invalid voice id"),
    "traversal new voice": (NEW_VOICE, 422, "invalid voice id"),
    "hidden voice id": (("GET", "/voices/.hidden", {}), 422, "invalid voice id"),
    "traversal delete": (("DELETE", "/voices/..%2F..%2Fetc", {}), 404, "Not Found"),
    "unknown format": (tts(text="hi", format="ogg"), 422, "format"),
    "unknown format openai": (speech(response_format="ogg"), 422, "response_format"),
    "temperature 5": (tts(text="hi", temperature="5"), 422, "temperature"),
    "temperature 5 openai": (speech(temperature=5), 422, "temperature"),
    "speed NaN": (tts(text="hi", speed="NaN"), 422, "speed: Input should be a finite number"),
    "top_p inf": (tts(text="hi", top_p="inf"), 422, "top_p: Input should be a finite number"),
    "unknown route": (("GET", "/nope", {}), 404, "Not Found"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_a_clear_4xx(client: httpx.Client, case: tuple[Request, int, str]) -> None:
    (method, path, kwargs), status, clue = case
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "type"}
    assert clue in body["message"]


def test_traversal_writes_nothing_outside_the_library(client: httpx.Client, server) -> None:
    files = {"audio": ("a.wav", sine_wav(1))}
    response = client.post("/voices", data={"voice_id": "../evil", "transcript": "x"}, files=files)
    assert response.status_code == 422
    assert not (server.log_path.parent / "evil").exists()
