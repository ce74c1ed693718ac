"""Sliding one-minute windows: requests per API key, and wrong keys per client address and key."""

from __future__ import annotations

import hashlib
import time
from collections import deque

from serving.errors import RateLimited

WINDOW_S = 60.0
PRUNE_AT = 4096
KNOWN_GOOD_S = 3600.0  # how long a key that worked from an address passes there


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
    """Wrong API keys, counted per (client address, key) and per address.

    A key that failed ``per_minute`` times from one address within 60 s is refused there (429)
    without being compared again: a client stuck on a stale key. An address that tried
    ``per_minute`` different wrong keys within 60 s is guessing: until the oldest of them leaves
    the window, every key from it that has not already worked there gets 429 *without being
    compared*, so a 429 tells a guesser nothing and the right key gives it no 200 to find. A key
    that worked from the address within the last hour (a client already in use behind the same
    NAT or office) still passes, and other addresses are never touched: one client's wrong keys
    do not lock the others out. Keys are kept as digests, never as sent (a wrong key is often a
    near miss of a real one).
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._pairs = _Windows()  # "<address> <key digest>" -> that key's failures there
        self._addresses = _Windows()  # address -> the first failure of each different wrong key
        self._worked: dict[str, float] = {}  # "<address> <key digest>" -> when it last worked

    @staticmethod
    def _pair(address: str, token: str) -> str:
        return f"{address} {hashlib.blake2b(token.encode(), digest_size=16).hexdigest()}"

    def check(self, address: str, token: str, now: float | None = None) -> None:
        """Raise ``TooManyAuthFailures`` before ``token`` is compared when it has failed too often
        from ``address``, or when the address is guessing and the key has not worked there."""
        now = time.monotonic() if now is None else now
        pair = self._pair(address, token)
        failures = self._pairs.recent(pair, now)
        if len(failures) >= self.per_minute:
            raise TooManyAuthFailures(
                f"this API key was wrong {self.per_minute} times in a minute from this address; "
                "fix the key, or wait before trying again",
                retry_after_s=WINDOW_S - (now - failures[0]),
            )
        tried = self._addresses.recent(address, now)
        if len(tried) >= self.per_minute and now - self._worked.get(pair, -KNOWN_GOOD_S) >= (
            KNOWN_GOOD_S
        ):
            raise TooManyAuthFailures(
                f"too many different wrong API keys from this address ({self.per_minute} per "
                "minute); wait before trying again",
                retry_after_s=WINDOW_S - (now - tried[0]),
            )

    def record(self, address: str, token: str, now: float | None = None) -> None:
        """Count one wrong ``token`` from ``address``."""
        now = time.monotonic() if now is None else now
        pair = self._pair(address, token)
        if not self._pairs.recent(pair, now):
            self._addresses.add(address, now)
        self._pairs.add(pair, now)

    def worked(self, address: str, token: str, now: float | None = None) -> None:
        """Remember that ``token`` was right from ``address``: it passes there while the
        address is throttled for guessing."""
        now = time.monotonic() if now is None else now
        if len(self._worked) >= PRUNE_AT:
            self._worked = {k: t for k, t in self._worked.items() if now - t < KNOWN_GOOD_S}
        self._worked[self._pair(address, token)] = now
