"""Back-pressure and cancellation: a full queue answers 429, a vanished client frees the worker."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

pytestmark = pytest.mark.service

# Eight ~220-character sentences: eight chunks, one engine call each.
SENTENCE = (
    "Sentence {} keeps going with enough words that it fills almost a whole chunk on its own, "
    "so that the request as a whole needs many separate engine calls before it is finished, "
    "which is what we want here."
)
LONG_TEXT = " ".join(SENTENCE.format(i) for i in range(8))


def wait_idle(client: httpx.Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/health").json()["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.1)


def timed_request(client: httpx.Client, text: str) -> float:
    t0 = time.perf_counter()
    response = client.post("/tts", data={"text": text, "format": "pcm"})
    assert response.status_code == 200
    return time.perf_counter() - t0


def chunk_seconds(client: httpx.Client) -> float:
    """How long one chunk of LONG_TEXT takes on its own (median of three)."""
    return statistics.median(timed_request(client, SENTENCE.format(99)) for _ in range(3))


def test_eight_concurrent_requests_succeed_or_get_429(server, client: httpx.Client) -> None:
    async def one(http: httpx.AsyncClient, i: int) -> httpx.Response:
        body = {"input": f"Concurrent request {i}.", "voice": "default", "response_format": "wav"}
        return await http.post("/v1/audio/speech", json=body)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(8)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"] == "queue_full"
    wait_idle(client)
    assert client.get("/health").json()["queue_depth"] == 0
    assert client.post("/tts", data={"text": "Free again."}).status_code == 200
    assert client.get("/metrics").json()["requests"]["rejected"] == statuses.count(429)


def test_disconnect_mid_stream_frees_the_worker(server, client: httpx.Client) -> None:
    chunk_s = chunk_seconds(client)
    cancelled_before = client.get("/metrics").json()["requests"]["cancelled"]
    with (
        server.client() as other,
        other.stream("POST", "/tts", data={"text": LONG_TEXT, "stream": "true"}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())  # the first chunk arrived; now hang up
    elapsed = timed_request(client, "Short.")
    # Uncancelled, this would wait for seven more chunks; allow the one in flight plus its own.
    assert elapsed < 2.5 * chunk_s + 0.3, (elapsed, chunk_s)
    wait_idle(client)
    assert client.get("/metrics").json()["requests"]["cancelled"] == cancelled_before + 1


def test_disconnect_before_a_whole_file_cancels_it(server, client: httpx.Client) -> None:
    chunk_s = chunk_seconds(client)
    with (
        server.client(timeout=2 * chunk_s) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/tts", data={"text": LONG_TEXT})
    elapsed = timed_request(client, "Short.")
    assert elapsed < 2.5 * chunk_s + 0.3, (elapsed, chunk_s)
