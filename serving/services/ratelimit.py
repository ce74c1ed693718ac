"""Sliding one-minute windows: requests per API key, and wrong-key attempts per client address."""

from __future__ import annotations

import time
from collections import deque

from serving.errors import RateLimited

WINDOW_S = 60.0
PRUNE_AT = 4096


class TooManyAuthFailures(RateLimited):
    error = "too_many_auth_failures"


class _Windows:
    """Timestamps per key within the last minute; idle keys are dropped so memory stays bounded."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._prune_at = PRUNE_AT

    def recent(self, key: str, now: float) -> deque[float]:
        """The key's timestamps younger than the window (an empty deque for an unseen key)."""
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and now - hits[0] >= WINDOW_S:
            hits.popleft()
        return hits

    def add(self, key: str, now: float) -> None:
        self._hits.setdefault(key, deque()).append(now)
        if len(self._hits) >= self._prune_at:
            self._prune(now)

    def _prune(self, now: float) -> None:
        idle = [key for key, hits in self._hits.items() if not hits or now - hits[-1] >= WINDOW_S]
        for key in idle:
            del self._hits[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._hits))

    def __len__(self) -> int:
        return len(self._hits)


class RateLimiter:
    """At most ``per_minute`` requests per key in any 60 s; 0 disables the limit."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows = _Windows()

    def check(self, key: str, now: float | None = None) -> None:
        """Count one request for ``key`` or raise ``RateLimited`` with a Retry-After."""
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        hits = self._windows.recent(key, now)
        if len(hits) >= self.per_minute:
            raise RateLimited(
                f"rate limit of {self.per_minute} requests per minute reached",
                retry_after_s=WINDOW_S - (now - hits[0]),
            )
        self._windows.add(key, now)


class AuthFailureLimiter:
    """Wrong API keys per client address: after ``per_minute`` in 60 s the address gets 429s.

    While an address is throttled its attempts are refused before the key is compared, so a
    guesser learns nothing (not even from a right guess) until the oldest failure leaves the window.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows = _Windows()

    def check(self, address: str, now: float | None = None) -> None:
        """Raise ``TooManyAuthFailures`` with a Retry-After when ``address`` is throttled."""
        now = time.monotonic() if now is None else now
        failures = self._windows.recent(address, now)
        if len(failures) >= self.per_minute:
            raise TooManyAuthFailures(
                f"too many wrong API keys from this address ({self.per_minute} per minute); "
                "wait before trying again",
                retry_after_s=WINDOW_S - (now - failures[0]),
            )

    def record(self, address: str, now: float | None = None) -> None:
        """Count one wrong key from ``address``."""
        self._windows.add(address, time.monotonic() if now is None else now)
