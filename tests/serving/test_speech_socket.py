"""``WS /v1/audio/speech/stream`` with a real WebSocket client: text arrives a few characters at a
time, each sentence is spoken as soon as it is complete, in order; text that is not a string,
piles up unspoken or follows ``end`` closes it 1008. (Closing the socket cancels the sentence in
generation: ``test_disconnect``; 1011 on a server error and the per-sentence ``error`` event:
``test_engine_cues``.)"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.service

SENTENCES = ["The first sentence is short.", "Then a second one.", "And the third ends it."]
DELTA_CHARS, DELTA_GAP_S = 4, 0.15


def socket_url(server: Any) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def read_all(
    ws: ClientConnection, arrivals: list[str | bytes], first_audio: threading.Event
) -> None:
    """Every message until the server closes; ``first_audio`` is set when audio first arrives."""
    for message in ws:
        arrivals.append(message)
        if isinstance(message, bytes):
            first_audio.set()


def send_in_deltas(ws: ClientConnection, text: str) -> None:
    for i in range(0, len(text), DELTA_CHARS):
        ws.send(json.dumps({"type": "text", "text": text[i : i + DELTA_CHARS]}))
        time.sleep(DELTA_GAP_S)


def test_sentences_are_spoken_as_they_complete_in_order(server: Any) -> None:
    """The first sentence's audio comes while the rest of the text is still unsent: the client
    sends the first sentence and the start of the next, then waits for audio before sending
    more (a server that waited for ``end`` would never send any, and the wait fails)."""
    text = " ".join(SENTENCES)
    opening = len(SENTENCES[0]) + 1 + DELTA_CHARS  # the first sentence is complete after this
    arrivals: list[str | bytes] = []
    first_audio = threading.Event()
    with connect(socket_url(server), open_timeout=30) as ws:
        reader = threading.Thread(target=read_all, args=(ws, arrivals, first_audio))
        reader.start()
        ws.send(json.dumps({"type": "start", "seed": 7}))
        send_in_deltas(ws, text[:opening])
        assert first_audio.wait(120), "no audio before the text ended"
        send_in_deltas(ws, text[opening:])
        ws.send(json.dumps({"type": "end"}))
        reader.join(120)
    events = [json.loads(m) for m in arrivals if isinstance(m, str)]
    audio = [m for m in arrivals if isinstance(m, bytes)]

    assert [e["text"] for e in events if e["type"] == "sentence_start"] == SENTENCES
    assert [e["index"] for e in events if e["type"] == "audio_done"] == [0, 1, 2]
    assert events[-1] == {"type": "done", "sentences": 3}
    samples = np.frombuffer(b"".join(audio), dtype="<i2")
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


def test_a_message_after_end_is_refused_1008(server: Any) -> None:
    """``end`` says the text is complete: anything after it is bad input, even while the last
    sentence is still being spoken (sent in one go, it reaches the server before that ends)."""
    with connect(socket_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "text": "A sentence to speak."}))
        ws.send(json.dumps({"type": "end"}))
        ws.send(json.dumps({"type": "text", "text": "One more thing."}))
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = ws.recv(60)
                if isinstance(message, str):
                    events.append(json.loads(message))
    assert ws.close_code == 1008
    assert events[-1]["type"] == "error" and "nothing may follow end" in events[-1]["message"]
    assert {"type": "done", "sentences": 1} not in events
