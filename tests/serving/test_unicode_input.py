"""Text that is not Unicode is refused when the request is read, on every route that takes text,
and nothing is generated or saved: a lone UTF-16 surrogate in JSON (``"\\ud800"``, which JSON
allows and nothing can encode) is a 422, a form field that is not UTF-8 a 400 (not Latin-1). The
keep-alive connection stays usable, and a 500 (a bug) says it closes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serving.app import create_app
from serving.settings import Settings

pytestmark = pytest.mark.service

SURROGATE = "\\ud800"  # as JSON text: the escape, six ASCII characters
NOT_TEXT = "lone UTF-16 surrogate"


def raw_json(client: httpx.Client, method: str, path: str, body: str) -> httpx.Response:
    """``body`` sent as written (httpx's own encoder cannot encode a lone surrogate)."""
    headers = {"content-type": "application/json"}
    return client.request(method, path, content=body.encode(), headers=headers)


def frames(client: httpx.Client) -> int:
    return client.get("/metrics").json()["frames_generated"]


def assert_refused(response: httpx.Response, status: int, clue: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "type"} and clue in body["message"], body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/normalize", f'{{"text": "{SURROGATE} 12"}}'),
        ("/v1/audio/speech", f'{{"input": "Hello {SURROGATE}.", "response_format": "wav"}}'),
        ("/v1/audio/speech/captioned", f'{{"input": "Hello {SURROGATE}."}}'),
        ("/v1/audio/speech", f'{{"input": "Hello.", "voice": {{"id": "{SURROGATE}"}}}}'),
    ],
    ids=["normalize", "speech", "captioned", "voice object"],
)
def test_a_lone_surrogate_is_a_422_before_any_work_and_the_connection_stays_usable(
    client: httpx.Client, path: str, body: str
) -> None:
    before = frames(client)
    assert_refused(raw_json(client, "POST", path, body), 422, NOT_TEXT)
    assert frames(client) == before, "nothing was generated"
    spoken = client.post("/normalize", json={"text": "12"})  # the same keep-alive connection
    assert spoken.status_code == 200 and spoken.json()["text"] == "twelve"


def test_a_pronunciation_list_with_a_lone_surrogate_is_refused_and_nothing_is_written(
    client: httpx.Client, server, spoken_wav: bytes
) -> None:
    files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
    created = client.post("/voices", data={"voice_id": "unicode", "transcript": "Hi."}, files=files)
    assert created.status_code == 201, created.text
    path = "/voices/unicode/pronunciations"
    assert client.put(path, json={"entries": {"SQL": "sequel"}}).status_code == 200
    listed = Path(server.log_path.parent / "voices" / "unicode" / "pronunciations.yaml")
    saved = listed.read_bytes()
    for body in (
        f'{{"entries": {{"SQL": "se{SURROGATE}quel"}}}}',  # in a value
        f'{{"entries": {{"S{SURROGATE}L": "sequel"}}}}',  # in a key
    ):
        assert_refused(raw_json(client, "PUT", path, body), 422, NOT_TEXT)
    assert listed.read_bytes() == saved
    assert client.get(path).json() == {"entries": {"SQL": "sequel"}}
    assert not list(listed.parent.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("path", "fields", "files"),
    [
        ("/tts", {"text": b"h\xffi"}, None),
        ("/voices", {"voice_id": b"latin", "transcript": b"h\xffi"}, "audio"),
    ],
    ids=["tts text", "voice transcript"],
)
def test_a_form_field_that_is_not_utf8_is_a_400_not_latin1(
    client: httpx.Client, spoken_wav: bytes, path: str, fields: dict, files: str | None
) -> None:
    parts = [(name, (None, value)) for name, value in fields.items()]
    if files:
        parts.append((files, ("v.wav", spoken_wav, "audio/wav")))
    assert_refused(client.post(path, files=parts), 400, "not valid utf-8 text")
    assert client.get("/voices/latin").status_code == 404, "no voice was saved"


def test_a_url_encoded_field_that_is_not_utf8_is_a_400(client: httpx.Client) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    refused = client.post("/tts", content=b"text=h%FFi", headers=form)
    assert_refused(refused, 400, "not valid utf-8 text")


def test_the_speech_socket_closes_1008_on_a_lone_surrogate(server) -> None:
    url = server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, open_timeout=30) as ws:
        ws.send(f'{{"type": "text", "text": "Hello {SURROGATE}. "}}')
        event = json.loads(ws.recv(30))
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
    assert event["error"] == "invalid_input" and NOT_TEXT in event["message"], event
    assert ws.close_code == 1008


def test_a_500_tells_the_client_not_to_reuse_its_connection() -> None:
    """A bug's 500 closes the connection (the server tears it down after one): the answer says
    so, and a keep-alive client does not send its next request into it. In-process, with a route
    that fails as a bug would."""
    app = create_app(Settings(_env_file=None))

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    answer = TestClient(app, raise_server_exceptions=False).get("/bug")
    assert answer.status_code == 500 and answer.json()["error"] == "internal_error"
    assert answer.headers["connection"] == "close"
