"""``WS /v1/audio/speech/stream`` with a real WebSocket client: text arrives a few characters at a
time, each sentence is spoken as soon as it is complete, in order, closing the socket cancels
the sentence in generation, and text that is not a string or piles up unspoken closes it 1008."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.service

SENTENCES = ["The first sentence is short.", "Then a second one.", "And the third ends it."]
DELTA_CHARS, DELTA_GAP_S = 4, 0.15


def socket_url(server: Any) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def read_all(ws: ClientConnection, arrivals: list[tuple[float, str | bytes]]) -> None:
    """Every message until the server closes, stamped with its arrival time."""
    for message in ws:
        arrivals.append((time.monotonic(), message))


def test_sentences_are_spoken_as_they_complete_in_order(server: Any) -> None:
    text = " ".join(SENTENCES)
    arrivals: list[tuple[float, str | bytes]] = []
    with connect(socket_url(server), open_timeout=30) as ws:
        reader = threading.Thread(target=read_all, args=(ws, arrivals))
        reader.start()
        ws.send(json.dumps({"type": "start", "seed": 7}))
        for i in range(0, len(text), DELTA_CHARS):
            ws.send(json.dumps({"type": "text", "text": text[i : i + DELTA_CHARS]}))
            time.sleep(DELTA_GAP_S)
        last_delta_at = time.monotonic()
        ws.send(json.dumps({"type": "end"}))
        reader.join(120)
    events = [json.loads(m) for _, m in arrivals if isinstance(m, str)]
    audio = [(t, m) for t, m in arrivals if isinstance(m, bytes)]

    assert [e["text"] for e in events if e["type"] == "sentence_start"] == SENTENCES
    assert [e["index"] for e in events if e["type"] == "audio_done"] == [0, 1, 2]
    assert events[-1] == {"type": "done", "sentences": 3}
    assert audio and audio[0][0] < last_delta_at  # the first sentence spoke before the text ended
    samples = np.frombuffer(b"".join(m for _, m in audio), dtype="<i2")
    assert len(samples) == sum(e["samples"] for e in events if e["type"] == "audio_done") > 0
    order = [e["type"] for e in events]
    assert order.index("audio_done") < order.index("sentence_start", 1)  # one sentence at a time


def test_bad_messages_get_an_error_event_and_close_1008(server: Any) -> None:
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "temperature": 9}))
        event = json.loads(ws.recv(30))
        assert event["type"] == "error" and "temperature" in event["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
        assert ws.close_code == 1008
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "shout", "text": "hi"}))
        assert "unknown message type" in json.loads(ws.recv(30))["message"]


def test_closing_the_socket_cancels_the_sentence_in_generation(server: Any) -> None:
    client = httpx.Client(base_url=server.url, timeout=30)
    before = client.get("/metrics").json()["requests"]["cancelled"]
    long_sentence = "This sentence goes on and on, " * 8 + "until the end."
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "text": long_sentence}))
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(30))["type"] == "sentence_start"
        assert isinstance(ws.recv(60), bytes)  # generating: hang up now
    deadline = time.monotonic() + 60
    while client.get("/metrics").json()["requests"]["cancelled"] == before:
        assert time.monotonic() < deadline, "the closed socket's sentence was never cancelled"
        time.sleep(0.2)
    while client.get("/health").json()["queue_depth"]:
        assert time.monotonic() < deadline, "the worker never came free"
        time.sleep(0.2)


def closed_with(ws: ClientConnection, wait_s: float = 10) -> tuple[dict, int | None]:
    """The error event the server sent, and its close code (the socket must close)."""
    event = json.loads(ws.recv(wait_s))
    with pytest.raises(ConnectionClosed):
        ws.recv(wait_s)
    return event, ws.close_code


def test_text_piling_up_unspoken_is_refused_as_soon_as_it_passes_the_limit(server: Any) -> None:
    """MAX_TEXT_CHARS (5000) bounds the text received and not yet spoken, not only at end."""
    with connect(socket_url(server), open_timeout=30) as ws:
        for _ in range(6):  # 1000 characters at a time, no sentence end: all of it pending
            ws.send(json.dumps({"type": "text", "text": "word " * 200}))
        event, code = closed_with(ws)
    assert code == 1008 and "MAX_TEXT_CHARS" in event["message"], event
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "text": "Hi. " * 250_000}))  # one 1 MB message
        event, code = closed_with(ws)
    assert code == 1008 and "MAX_TEXT_CHARS" in event["message"], event


@pytest.mark.parametrize(
    "text", [{"a": 1}, ["hi"], 7, None], ids=["object", "list", "number", "null"]
)
def test_text_that_is_not_a_string_is_refused_not_spoken(server: Any, text: object) -> None:
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "text": text}))
        event, code = closed_with(ws)
    assert code == 1008 and event["type"] == "error" and "string" in event["message"], event
