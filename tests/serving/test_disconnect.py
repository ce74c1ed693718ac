"""A client that goes away stops its generation: a whole-file answer of one text chunk, and the
sentence a speech socket is speaking.

Long by construction, not by timing: on the tiny checkpoint ``ONE_CHUNK`` with seed ``SEED``
runs for hundreds of frames before the model says end-of-speech (deterministic for the seed;
``long_frames`` measures it), and each client hangs up as soon as the decoder has made frames for
it. What proves the stop is a count: the frames made for a request that was left, far fewer than
it would have made. Deadlines only bound how long the test waits for the worker to come free.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.service

# One sentence, so the whole-file answer is one text chunk; long enough to use the frame budget.
ONE_CHUNK = "This single sentence keeps the worker busy for a long while " + "and on " * 20 + "end."
SEED = 4  # 391 frames on the tiny checkpoint (seed 1: 145, seed 2: 52)
BLOCK = 8  # frames between the engine's checks (eos_check_interval)
WAIT_S = 120.0


@pytest.fixture(scope="module")
def slow_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server: Callable
) -> Iterator[Any]:
    """Frame budget of the whole cache: a request runs until the model ends it unless stopped."""
    root = tmp_path_factory.mktemp("slow")
    live = ready_server(
        root, tiny_checkpoint, root / "voices", MAX_NEW_TOKENS="4096", QUEUE_SIZE="4"
    )
    yield live
    live.stop()


def _metrics(server: Any) -> dict:
    return httpx.get(f"{server.url}/metrics", timeout=30).json()


def _frames(server: Any) -> int:
    return _metrics(server)["frames_generated"]


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S:.0f} s"
        time.sleep(0.05)


def _idle(server: Any) -> bool:
    return _metrics(server)["queue_depth"] == 0


def _uncached(server: Any) -> None:
    """Once the worker is free, empty the semantic cache: the same text and seed are generated
    again, not replayed (nor put back by a request still running)."""
    _until(lambda: _idle(server), "the worker free before the next request")
    assert httpx.post(f"{server.url}/cache/clear", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def long_frames(slow_server: Any) -> int:
    """The frames ``ONE_CHUNK`` at ``SEED`` takes when nobody leaves."""
    _uncached(slow_server)
    before = _frames(slow_server)
    form = {"text": ONE_CHUNK, "seed": str(SEED)}
    assert httpx.post(f"{slow_server.url}/tts", data=form, timeout=600).status_code == 200
    frames = _frames(slow_server) - before
    assert frames >= 40 * BLOCK, f"only {frames} frames: pick a seed that speaks longer"
    _uncached(slow_server)
    return frames


def _whole_file_left_during_generation(server: Any) -> int:
    """POST a whole-file /tts on a raw connection, close it as soon as the decoder has made frames
    for it, and wait for the worker to be free; the frames made for it."""
    _uncached(server)
    before = _frames(server)
    address = urlsplit(server.url)
    body = urlencode({"text": ONE_CHUNK, "seed": SEED}).encode()
    head = (
        f"POST /tts HTTP/1.1\r\nHost: {address.netloc}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(head.encode() + body)
        _until(lambda: _frames(server) > before, "generation under way")
    _until(lambda: _idle(server), "the worker free after the client left")
    return _frames(server) - before


def test_whole_file_requests_closed_early_are_cancelled_and_free_the_worker(
    slow_server: Any, long_frames: int
) -> None:
    before = _metrics(slow_server)["requests"]
    made = [_whole_file_left_during_generation(slow_server) for _ in range(3)]
    # Uncancelled each would make long_frames; stopped, a block or a few past the hang-up.
    assert all(0 < frames <= long_frames // 2 for frames in made), (made, long_frames)
    after = _metrics(slow_server)["requests"]
    assert after["cancelled"] - before["cancelled"] == 3
    assert after["ok"] == before["ok"]
    assert "generation cancelled" in slow_server.log()


def test_closing_the_socket_cancels_the_sentence_in_generation(
    slow_server: Any, long_frames: int
) -> None:
    """The socket speaks the same sentence with the same seed; the client hangs up at its first
    audio. The sentence counts as ``cancelled`` (route ``stream``) and stops early."""
    _uncached(slow_server)
    before = _metrics(slow_server)
    url = slow_server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "seed": SEED}))
        ws.send(json.dumps({"type": "text", "text": ONE_CHUNK}))
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(WAIT_S))["type"] == "sentence_start"
        assert isinstance(ws.recv(WAIT_S), bytes)  # generating: hang up now
    _until(
        lambda: _metrics(slow_server)["requests"]["cancelled"] > before["requests"]["cancelled"],
        "the closed socket's sentence cancelled",
    )
    _until(lambda: _idle(slow_server), "the worker free after the socket closed")
    after = _metrics(slow_server)
    made = after["frames_generated"] - before["frames_generated"]
    assert 0 < made <= long_frames // 2, (made, long_frames)
    assert after["requests"]["cancelled"] - before["requests"]["cancelled"] == 1
    assert after["requests"]["ok"] == before["requests"]["ok"]
