"""Normalisation has a bounded cost on a live server: a long digit run answers in well under two
seconds while ``/health`` keeps answering and the process does not grow. (That a client leaving
stops its normalisation is tested in ``test_units``: with the cost bounded, no request is long
enough to hang up in the middle of.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.service

MIB = 2**20
DIGITS = "1" * 5000  # at most MAX_TEXT_CHARS; a span the grammar once took a minute over
HEALTH_TIMEOUT_S = 1.0


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


class HealthPoll(threading.Thread):
    """``/health`` every 50 ms with a short timeout, and the server's peak RSS, until stopped."""

    def __init__(self, url: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.url, self.pid = url, pid
        self.baseline_kib = self.peak_kib = rss(pid)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=HEALTH_TIMEOUT_S) as http:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    http.get("/health").raise_for_status()
                    self.latencies.append(time.monotonic() - started)
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                self.peak_kib = max(self.peak_kib, rss(self.pid))
                time.sleep(0.05)

    def __enter__(self) -> HealthPoll:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def test_five_thousand_digits_answer_fast_with_health_answering_and_no_growth(
    server, client: httpx.Client
) -> None:
    assert client.post("/normalize", json={"text": "On 3/4/2025, 12 dollars."}).status_code == 200
    with HealthPoll(server.url, server.process.pid) as poll:
        started = time.monotonic()
        response = client.post("/normalize", json={"text": DIGITS}, timeout=120)
        took = time.monotonic() - started
        time.sleep(0.2)  # a last poll or two after the answer
    assert response.status_code == 200, response.text
    assert took < 2.0, f"5,000 digits took {took:.1f} s"
    assert not poll.failures and poll.latencies, poll.failures
    assert max(poll.latencies) < HEALTH_TIMEOUT_S
    growth = (poll.peak_kib - poll.baseline_kib) * 1024
    assert growth < 50 * MIB, f"server RSS grew {growth / MIB:.0f} MiB"
