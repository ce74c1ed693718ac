"""The voice library over HTTP: add (with and without a transcript), use, list, delete."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.service


def add_voice(client: httpx.Client, voice_id: str, audio: bytes, **form: str) -> httpx.Response:
    files = {"audio": ("voice.wav", audio, "audio/wav")}
    return client.post("/voices", data={"voice_id": voice_id, **form}, files=files)


def test_add_use_and_delete_a_voice(client: httpx.Client, spoken_wav: bytes) -> None:
    created = add_voice(client, "narrator", spoken_wav, transcript="Hello there.", name="Narrator")
    assert created.status_code == 201, created.text
    assert created.json()["transcript_source"] == "user"
    assert created.json()["duration_s"] > 1

    assert "narrator" in {v["id"] for v in client.get("/voices").json()["voices"]}
    assert {"id": "narrator", "name": "Narrator"} in client.get("/v1/audio/voices").json()["voices"]
    assert client.get("/voices/narrator").json()["name"] == "Narrator"

    tts = client.post("/tts", data={"text": "Saved voice.", "voice_id": "narrator"})
    assert tts.status_code == 200, tts.text
    speech = client.post("/v1/audio/speech", json={"input": "Saved.", "voice": "narrator"})
    assert speech.status_code == 200

    assert add_voice(client, "narrator", spoken_wav, transcript="x").status_code == 409
    assert client.delete("/voices/narrator").json() == {"id": "narrator", "deleted": True}
    assert client.get("/voices/narrator").status_code == 404
    assert client.delete("/voices/narrator").status_code == 404


def test_voice_without_transcript_is_transcribed(client: httpx.Client, spoken_wav: bytes) -> None:
    created = add_voice(client, "asr-voice", spoken_wav)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["transcript_source"] == "asr"
    assert "reference recording" in body["transcript"].lower()
    client.delete("/voices/asr-voice")


def test_saved_voice_shadows_an_openai_name(client: httpx.Client, spoken_wav: bytes) -> None:
    assert add_voice(client, "nova", spoken_wav, transcript="Hello there.").status_code == 201
    response = client.post("/tts", data={"text": "Shadowed.", "voice_id": "nova", "seed": "4"})
    unconditioned = client.post("/tts", data={"text": "Shadowed.", "seed": "4"})
    assert response.status_code == unconditioned.status_code == 200
    assert response.content != unconditioned.content
    client.delete("/voices/nova")
