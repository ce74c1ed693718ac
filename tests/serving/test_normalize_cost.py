"""Normalisation has a bounded cost on a live server: 5,000 digits are said in a bounded CPU
time and peak of memory of the server process, while ``/health`` keeps answering. (That a client
leaving stops its normalisation is tested in ``test_units``: with the cost bounded, no request is
long enough to hang up in the middle of.)

README's figures (tiny checkpoint, two shared cores): 0.04 s, ``/health`` within 7 ms meanwhile,
RSS +0.2 MiB. The bounds are the server's CPU seconds over the request (what a loaded machine
does not inflate) and its peak resident memory during it (a spike freed before the answer
counts), with headroom: measured 0.00-0.01 CPU s (10 ms ticks) and +0.04 MiB here. ``/health``
has a deadline a loaded machine meets: the grammar that once took a minute blocked it as long.
"""

from __future__ import annotations

import time

import httpx
import psutil
import pytest
from watcher import Watcher

pytestmark = pytest.mark.service

MIB = 2**20
DIGITS = "1" * 5000  # at most MAX_TEXT_CHARS; a span the grammar once took a minute over
CPU_S = 0.2
PEAK_BYTES = 4 * MIB
HEALTH_TIMEOUT_S = 10.0


class HealthPoll(Watcher):
    """``/health`` every 50 ms until stopped, each with a deadline a loaded machine meets."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=HEALTH_TIMEOUT_S) as http:
            while not self.done.is_set():
                try:
                    http.get("/health").raise_for_status()
                    self.answered += 1
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                time.sleep(0.05)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_five_thousand_digits_cost_little_cpu_and_memory_with_health_answering(
    server, client: httpx.Client, peak_rss
) -> None:
    assert client.post("/normalize", json={"text": "On 3/4/2025, 12 dollars."}).status_code == 200
    process = psutil.Process(server.process.pid)
    with HealthPoll(server.url) as poll:
        with peak_rss(server.process.pid) as peak:
            started = cpu_seconds(process)
            response = client.post("/normalize", json={"text": DIGITS}, timeout=120)
            took = cpu_seconds(process) - started
        while poll.answered < 3 and not poll.failures:  # a few answers around the request
            time.sleep(0.05)
    assert response.status_code == 200, response.text
    assert not any(ch.isdigit() for ch in response.json()["text"])
    assert took < CPU_S, f"5,000 digits took {took:.2f} CPU s of the server"
    assert peak.growth_bytes < PEAK_BYTES, f"server RSS peaked +{peak.growth_bytes / MIB:.1f} MiB"
    assert not poll.failures, poll.failures
