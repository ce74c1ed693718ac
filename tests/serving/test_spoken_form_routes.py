"""Spoken form through a live server: requests are normalised unless they say not to, the
global PRONUNCIATIONS list and a voice's own list apply (voice first), and the voice's list has
its own CRUD routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.service


def add_voice(client: httpx.Client, voice_id: str, audio: bytes) -> httpx.Response:
    files = {"audio": ("voice.wav", audio, "audio/wav")}
    return client.post("/voices", data={"voice_id": voice_id, "transcript": "Hi."}, files=files)


@pytest.fixture(scope="module")
def listed(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server
) -> Iterator[httpx.Client]:
    """A server with a global list (``SQL: sequel``, ``dollars: bucks``)."""
    root = tmp_path_factory.mktemp("spoken")
    (root / "pronunciations.yaml").write_text("SQL: sequel\ndollars: bucks\n")
    server = ready_server(
        root, tiny_checkpoint, root / "voices", PRONUNCIATIONS="pronunciations.yaml", WARMUP="false"
    )
    with server.client() as http:
        yield http
    server.stop()


def test_text_is_normalised_then_the_global_list_applies(listed: httpx.Client) -> None:
    spoken = listed.post("/normalize", json={"text": "Learn SQL for $20 on 3/4/2025."})
    assert spoken.status_code == 200, spoken.text
    assert spoken.json() == {
        "text": "Learn sequel for twenty bucks on the fourth of march twenty twenty five.",
        "normalized": True,
    }
    as_written = listed.post("/normalize", json={"text": "SQL for $20.", "normalize": False})
    assert as_written.json() == {"text": "sequel for $20.", "normalized": False}


def test_a_voice_list_is_created_read_applied_and_removed(
    listed: httpx.Client, spoken_wav: bytes
) -> None:
    assert add_voice(listed, "reader", spoken_wav).status_code == 201
    assert listed.get("/voices/reader/pronunciations").json() == {"entries": {}}
    put = listed.put("/voices/reader/pronunciations", json={"entries": {"SQL": "ess queue ell"}})
    assert put.status_code == 200 and put.json() == {"entries": {"SQL": "ess queue ell"}}
    assert listed.get("/voices/reader/pronunciations").json() == put.json()

    body = {"text": "SQL costs $3.", "voice_id": "reader"}
    assert listed.post("/normalize", json=body).json()["text"] == "ess queue ell costs three bucks."
    speech = listed.post("/v1/audio/speech", json={"input": "SQL, 2 times.", "voice": "reader"})
    assert speech.status_code == 200
    tts = listed.post("/tts", data={"text": "SQL 3.", "voice_id": "reader", "normalize": "false"})
    assert tts.status_code == 200

    assert listed.delete("/voices/reader/pronunciations").json() == {"entries": {}}
    assert listed.post("/normalize", json=body).json()["text"] == "sequel costs three bucks."


def test_bad_lists_and_unknown_voices_are_clear_4xx(
    listed: httpx.Client, spoken_wav: bytes
) -> None:
    unknown = listed.put("/voices/nobody/pronunciations", json={"entries": {"a": "b"}})
    assert unknown.status_code == 404 and "unknown voice" in unknown.json()["message"]
    assert listed.get("/voices/nobody/pronunciations").status_code == 404
    assert add_voice(listed, "critic", spoken_wav).status_code == 201
    too_long = listed.put("/voices/critic/pronunciations", json={"entries": {"x" * 101: "y"}})
    assert too_long.status_code == 422 and "longer than 100" in too_long.json()["message"]
    empty = listed.put("/voices/critic/pronunciations", json={"entries": {"SQL": " "}})
    assert empty.status_code == 422 and "neither side may be empty" in empty.json()["message"]
    assert listed.get("/voices/critic/pronunciations").json() == {"entries": {}}  # nothing kept


def test_a_broken_global_list_stops_startup_naming_it(
    tmp_path: Path, tiny_checkpoint: Path, launch_server
) -> None:
    (tmp_path / "broken.yaml").write_text("SQL: [sequel\n")
    server = launch_server(
        tmp_path,
        {
            "MODEL_DIR": str(tiny_checkpoint),
            "VOICES_DIR": str(tmp_path / "v"),
            "PRONUNCIATIONS": "broken.yaml",
        },
    )
    try:
        assert server.process.wait(120) != 0
    finally:
        server.stop()
    assert "cannot start" in server.log() and "broken.yaml" in server.log()
