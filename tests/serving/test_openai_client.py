"""The official ``openai`` client against /v1: every response_format, plain and streamed."""

from __future__ import annotations

import io

import av
import numpy as np
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_create(openai_client: OpenAI, fmt: str) -> None:
    response = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input="The official client works.", response_format=fmt
    )
    assert decoded_seconds(response.content, fmt) > 0.1


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_streaming_response(openai_client: OpenAI, fmt: str) -> None:
    with openai_client.audio.speech.with_streaming_response.create(
        model="s1-mini", voice="default", input="Streamed. In two sentences.", response_format=fmt
    ) as response:
        chunks = list(response.iter_bytes())
    assert decoded_seconds(b"".join(chunks), fmt) > 0.1


def test_speech_speed_and_voice_object(openai_client: OpenAI) -> None:
    response = openai_client.audio.speech.create(
        model="tts-1", voice={"id": "default"}, input="Faster.", response_format="pcm", speed=1.5
    )
    assert np.frombuffer(response.content, dtype="<i2").size > 0
