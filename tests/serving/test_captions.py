"""Word timings: the aligner finds every word of real Piper speech in order, and the live service
returns timings with the audio (``/v1/audio/speech/captioned``, ``/tts`` with ``timestamps``),
saying plainly that there are none on a synthetic checkpoint's noise."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import soundfile as sf

from serving.services.asr import Transcriber
from serving.services.captions import align_words, spoken_words

pytestmark = pytest.mark.service

SPOKEN_TEXT = "Hello there, this is a short reference recording of my voice."  # the spoken_wav


def test_every_word_of_real_speech_is_found_in_order_within_the_audio(spoken_wav: bytes) -> None:
    audio, rate = sf.read(io.BytesIO(spoken_wav), dtype="float32")
    duration = len(audio) / rate
    words = align_words(SPOKEN_TEXT, Transcriber().words(audio, rate), duration)
    assert [w.word for w in words] == spoken_words(SPOKEN_TEXT)
    assert all(0 <= w.start < w.end <= duration for w in words)
    assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))
    assert sum(w.aligned for w in words) >= len(words) - 1  # Whisper heard (nearly) all of them


def test_words_whisper_missed_share_the_gap_between_their_neighbours() -> None:
    heard = [("Hello", 0.0, 0.4), ("world", 1.0, 1.4)]
    words = align_words("(excited) Hello, big wide world!", heard, 2.0)
    assert [(w.word, w.start, w.end, w.aligned) for w in words] == [
        ("Hello", 0.0, 0.4, True),
        ("big", 0.4, 0.7, False),
        ("wide", 0.7, 1.0, False),
        ("world", 1.0, 1.4, True),
    ]
    tail = align_words("one two three", [("one", 0.0, 0.5)], 0.5)
    assert [w.aligned for w in tail] == [True, False, False]
    assert all(0 <= w.start < w.end <= 0.5 for w in tail)


def test_captioned_speech_on_a_synthetic_checkpoint_says_why_there_are_no_words(
    client: httpx.Client,
) -> None:
    body = {"input": "It costs $5.", "voice": "default", "response_format": "wav", "seed": 3}
    captioned = client.post("/v1/audio/speech/captioned", json=body)
    assert captioned.status_code == 200, captioned.text
    payload = captioned.json()
    assert payload["alignment"].startswith("unavailable: synthetic checkpoint")
    assert payload["words"] == [] and payload["text"] == "It costs five dollars."
    audio, rate = sf.read(io.BytesIO(base64.b64decode(payload["audio"])))
    assert rate == payload["sample_rate"] == 44_100
    assert abs(len(audio) / rate - payload["duration_s"]) < 0.01


def test_tts_timestamps_come_in_headers_and_not_with_streaming(client: httpx.Client) -> None:
    timed = client.post("/tts", data={"text": "Two words.", "timestamps": "true", "seed": "3"})
    assert timed.status_code == 200 and timed.content[:4] == b"RIFF"
    assert json.loads(base64.urlsafe_b64decode(timed.headers["x-words"])) == []
    assert timed.headers["x-alignment"].startswith("unavailable: synthetic checkpoint")
    streamed = client.post("/tts", data={"text": "No.", "timestamps": "true", "stream": "true"})
    assert streamed.status_code == 422 and "stream=false" in streamed.json()["message"]
