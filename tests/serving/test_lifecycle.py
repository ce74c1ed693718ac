"""Server processes coming and going: refusing to start, restarts, API keys and rate limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.service

KEY = "test-key-123"


def test_refuses_to_start_without_a_checkpoint(tmp_path: Path, launch_server) -> None:
    server = launch_server(
        tmp_path, {"MODEL_DIR": str(tmp_path / "empty"), "VOICES_DIR": str(tmp_path / "v")}
    )
    try:
        assert server.process.wait(120) != 0
    finally:
        server.stop()
    log = server.log()
    assert "cannot start" in log and "MODEL_DIR" in log and "never generates one" in log


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("restart") / "voices"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    library: Path,
    spoken_wav: bytes,
    ready_server,
) -> Iterator:
    """Save a voice on one server process, then start a second (with keys) on the same library."""
    first = ready_server(tmp_path_factory.mktemp("first"), tiny_checkpoint, library, WARMUP="false")
    try:
        with first.client() as http:
            files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
            saved = http.post(
                "/voices", data={"voice_id": "keeper", "transcript": "Hello."}, files=files
            )
            assert saved.status_code == 201, saved.text
    finally:
        first.stop()
    second = ready_server(
        tmp_path_factory.mktemp("second"),
        tiny_checkpoint,
        library,
        API_KEY=f"other-key,{KEY}",
        RATE_LIMIT_PER_MINUTE="6",
        WARMUP="false",
    )
    yield second
    second.stop()


def test_voice_library_survives_a_restart(secured) -> None:
    with secured.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        voices = http.get("/voices").json()["voices"]
        assert [v["id"] for v in voices] == ["keeper"]
        assert (
            http.post("/tts", data={"text": "Still here.", "voice_id": "keeper"}).status_code == 200
        )


def test_api_key_guards_every_route_but_health(secured) -> None:
    assert httpx.get(f"{secured.url}/health").status_code == 200
    for path in ("/voices", "/metrics", "/emotions", "/v1/models"):
        response = httpx.get(f"{secured.url}{path}", headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, path
        assert response.json()["type"] == "authentication_error"
    assert httpx.get(f"{secured.url}/metrics").status_code == 401


def test_rate_limit_per_key(secured) -> None:
    with secured.client(headers={"Authorization": "Bearer other-key"}) as http:
        statuses = [http.get("/emotions").status_code for _ in range(8)]
    assert statuses[:6] == [200] * 6 and statuses[6:] == [429, 429]
    url = secured.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, additional_headers={"Authorization": "Bearer other-key"}) as ws:
        assert json.loads(ws.recv(30))["error"] == "rate_limited"  # the same budget as HTTP
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
        assert ws.close_code == 1013  # try again later
    with secured.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert http.get("/emotions").status_code == 200  # another key has its own budget


def test_the_speech_socket_needs_the_key_too(secured) -> None:
    url = secured.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == 401  # the answer an HTTP request gets
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(30)) == {"type": "done", "sentences": 0}
