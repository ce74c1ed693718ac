"""A sliding one-minute window per API key (or per client address when keys are off)."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from serving.errors import RateLimited

WINDOW_S = 60.0


class RateLimiter:
    """At most ``per_minute`` requests per key in any 60 s; 0 disables the limit."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: defaultdict[str, deque[float]] = defaultdict(deque)

    def check(self, key: str, now: float | None = None) -> None:
        """Count one request for ``key`` or raise ``RateLimited`` with a Retry-After."""
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        hits = self._hits[key]
        while hits and now - hits[0] >= WINDOW_S:
            hits.popleft()
        if len(hits) >= self.per_minute:
            raise RateLimited(
                f"rate limit of {self.per_minute} requests per minute reached",
                retry_after_s=WINDOW_S - (now - hits[0]),
            )
        hits.append(now)
