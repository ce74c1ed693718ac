"""A client that goes away stops its generation, even a whole-file answer of one text chunk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.service

# One sentence, so the whole-file answer is one text chunk; long enough to use the frame budget.
ONE_CHUNK = "This single sentence keeps the worker busy for a long while " + "and on " * 20 + "end."


@pytest.fixture(scope="module")
def slow_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server: Callable
) -> Iterator[Any]:
    """Frame budget of the whole cache: a request runs for seconds unless it is stopped."""
    root = tmp_path_factory.mktemp("slow")
    live = ready_server(
        root, tiny_checkpoint, root / "voices", MAX_NEW_TOKENS="4096", QUEUE_SIZE="4"
    )
    yield live
    live.stop()


def _metrics(server: Any) -> dict:
    return httpx.get(f"{server.url}/metrics", timeout=30).json()


def _closed_after(server: Any, seconds: float, seed: int) -> None:
    with pytest.raises(httpx.ReadTimeout):  # a new seed each: no semantic-cache hit
        httpx.post(
            f"{server.url}/tts",
            data={"text": ONE_CHUNK, "seed": str(seed)},
            timeout=httpx.Timeout(30, read=seconds),
        )


def test_whole_file_requests_closed_early_are_cancelled_and_free_the_worker(
    slow_server: Any,
) -> None:
    started = time.perf_counter()
    full = httpx.post(f"{slow_server.url}/tts", data={"text": ONE_CHUNK, "seed": "1"}, timeout=300)
    full_s = time.perf_counter() - started
    assert full.status_code == 200 and full_s > 1.5, f"one request took only {full_s:.1f} s"
    before = _metrics(slow_server)["requests"]

    for seed in (2, 3, 4):
        _closed_after(slow_server, 0.5, seed)

    deadline = time.monotonic() + 1.0
    while (metrics := _metrics(slow_server))["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics["queue_depth"] == 0, "the worker is still generating for gone clients"
    assert metrics["requests"]["cancelled"] - before["cancelled"] == 3
    assert metrics["requests"]["ok"] == before["ok"]
    assert "generation cancelled" in slow_server.log()
