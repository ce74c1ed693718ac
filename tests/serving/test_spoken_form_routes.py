"""Spoken form through a live server: requests are normalised unless they say not to, the
global PRONUNCIATIONS list and a voice's own list apply (voice first), and the voice's list has
its own CRUD routes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.service


def add_voice(client: httpx.Client, voice_id: str, audio: bytes) -> httpx.Response:
    files = {"audio": ("voice.wav", audio, "audio/wav")}
    return client.post("/voices", data={"voice_id": voice_id, "transcript": "Hi."}, files=files)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``listed`` server's folder; its voice library is ``root / "voices"``."""
    return tmp_path_factory.mktemp("spoken")


@pytest.fixture(scope="module")
def listed_server(root: Path, tiny_checkpoint: Path, ready_server) -> Iterator:
    """A server with a global list (``SQL: sequel``, ``dollars: bucks``)."""
    (root / "pronunciations.yaml").write_text("SQL: sequel\ndollars: bucks\n")
    server = ready_server(
        root, tiny_checkpoint, root / "voices", PRONUNCIATIONS="pronunciations.yaml", WARMUP="false"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def listed(listed_server) -> Iterator[httpx.Client]:
    with listed_server.client() as http:
        yield http


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


def test_a_put_without_entries_is_refused_and_keeps_the_list(
    listed: httpx.Client, spoken_wav: bytes
) -> None:
    assert add_voice(listed, "keeper", spoken_wav).status_code == 201
    kept = {"entries": {"SQL": "sequel"}}
    assert listed.put("/voices/keeper/pronunciations", json=kept).status_code == 200
    for body in ({}, {"entires": {"SQL": "squeal"}}, {"entries": {"a": "b"}, "extra": 1}):
        refused = listed.put("/voices/keeper/pronunciations", json=body)
        assert refused.status_code == 422, (body, refused.text)
    assert "entries" in listed.put("/voices/keeper/pronunciations", json={}).json()["message"]
    assert listed.get("/voices/keeper/pronunciations").json() == kept
    emptied = listed.put("/voices/keeper/pronunciations", json={"entries": {}})
    assert emptied.status_code == 200 and emptied.json() == {"entries": {}}  # on purpose: fine


def _write_50_mb(path: Path) -> None:
    line = "word: a spoken replacement that is long enough\n"
    with path.open("w") as out:
        out.write(line * (50 * 2**20 // len(line)))


BROKEN_LISTS = {
    "malformed": lambda path: path.write_text("SQL: [sequel\n"),
    "non-text values": lambda path: path.write_text("SQL: {a: 1}\nGIF: 3\n"),
    "10,000 entries": lambda path: path.write_text("".join(f"w{i}: s{i}\n" for i in range(10_000))),
    "50 MB": _write_50_mb,
}


def _voice_uses(listed: httpx.Client, voice_id: str) -> dict[str, tuple[int, str]]:
    """(status, message) of every route that uses the voice, a WebSocket stream included."""
    answers = {
        "normalize": listed.post("/normalize", json={"text": "SQL.", "voice_id": voice_id}),
        "tts": listed.post("/tts", data={"text": "SQL.", "voice_id": voice_id}),
        "openai": listed.post("/v1/audio/speech", json={"input": "SQL.", "voice": voice_id}),
        "get list": listed.get(f"/voices/{voice_id}/pronunciations"),
    }
    found = {name: (r.status_code, r.json().get("message", "")) for name, r in answers.items()}
    url = str(listed.base_url).replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "voice": voice_id}))
        event = json.loads(ws.recv(60))
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
        found["socket"] = (ws.close_code, event.get("message", ""))
    return found


READ_VERDICT = "voice hand-edited: unusable pronunciation list"  # logged once per read


@pytest.mark.parametrize("write", BROKEN_LISTS.values(), ids=BROKEN_LISTS.keys())
def test_a_broken_voice_list_on_disk_is_a_409_naming_the_voice_and_the_file(
    listed: httpx.Client,
    listed_server,
    root: Path,
    spoken_wav: bytes,
    write: Callable[[Path], None],
) -> None:
    """Every route that uses the voice refuses it, ten times over (five routes, twice), from
    one reading of this version of the file: the server logs its verdict once per reading."""
    if not (root / "voices" / "hand-edited").is_dir():
        assert add_voice(listed, "hand-edited", spoken_wav).status_code == 201
    write(root / "voices" / "hand-edited" / "pronunciations.yaml")
    readings = listed_server.log().count(READ_VERDICT)
    for _ in range(2):
        started = time.monotonic()
        answers = _voice_uses(listed, "hand-edited")
        assert time.monotonic() - started < 60, "a broken list is refused, not worked through"
        for route, (status, message) in answers.items():
            assert status == (1008 if route == "socket" else 409), (route, status, message)
            assert "'hand-edited'" in message and "pronunciations.yaml" in message, message
    assert listed_server.log().count(READ_VERDICT) == readings + 1  # this version, read once
    assert listed.post("/tts", data={"text": "SQL."}).status_code == 200  # other voices unhurt
    repaired = {"entries": {"SQL": "sequel"}}
    assert listed.put("/voices/hand-edited/pronunciations", json=repaired).status_code == 200
    body = {"text": "SQL.", "voice_id": "hand-edited"}
    assert listed.post("/normalize", json=body).json()["text"] == "sequel."


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
