"""The official ``openai`` client against /v1: every response_format, plain and streamed."""

from __future__ import annotations

import io

import av
import pytest
from openai import OpenAI

pytestmark = pytest.mark.service

FORMATS = ["wav", "pcm", "mp3", "opus", "flac", "aac"]


@pytest.fixture(scope="module")
def openai_client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def decoded_seconds(data: bytes, fmt: str) -> float:
    """Decode the whole file; PCM is raw s16le at 44.1 kHz."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return len(data) / 2 / 44_100
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


SEEDED = {"input": "The official client works. In two sentences.", "extra_body": {"seed": 1234}}


@pytest.fixture(scope="module")
def expected_seconds(openai_client: OpenAI) -> float:
    """How long the seeded request is as raw PCM.

    The tiny checkpoint stops at a random frame, so a fixed seed (not a minimum length) is what
    makes every format's answer comparable to this one.
    """
    reference = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", response_format="pcm", **SEEDED
    )
    seconds = decoded_seconds(reference.content, "pcm")
    assert seconds > 0
    return seconds


def same_length_as(expected: float) -> object:
    """Equal up to the codecs' priming and frame padding (MP3: up to 1105 + 1151 samples, 51 ms)."""
    return pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_create(openai_client: OpenAI, expected_seconds: float, fmt: str) -> None:
    response = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", response_format=fmt, **SEEDED
    )
    assert decoded_seconds(response.content, fmt) == same_length_as(expected_seconds)


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_streaming_response(
    openai_client: OpenAI, expected_seconds: float, fmt: str
) -> None:
    """A streamed file decodes to the whole audio, not only its first chunks."""
    with openai_client.audio.speech.with_streaming_response.create(
        model="s1-mini", voice="default", response_format=fmt, **SEEDED
    ) as response:
        chunks = list(response.iter_bytes())
    assert decoded_seconds(b"".join(chunks), fmt) == same_length_as(expected_seconds)


def test_speech_speed_and_voice_object(openai_client: OpenAI) -> None:
    """``speed=1.5`` (and a voice given as an object) plays the same seeded speech in two thirds
    of the time."""
    same = {"model": "tts-1", "voice": {"id": "default"}, "response_format": "pcm", **SEEDED}
    normal = openai_client.audio.speech.create(speed=1.0, **same)
    fast = openai_client.audio.speech.create(speed=1.5, **same)
    normal_s, fast_s = decoded_seconds(normal.content, "pcm"), decoded_seconds(fast.content, "pcm")
    assert normal_s > 0
    assert fast_s == pytest.approx(normal_s / 1.5, rel=0.05)
