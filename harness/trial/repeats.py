"""Adaptive repeats: time a subject until its median latency is known to the precision asked.

A fixed count is either wasteful (a stable subject is known after a handful) or too few (a noisy
one needs many). So repeats run until the median's 95 % confidence interval lies within
``ci_target_pct`` of the median, or a count or time cap is reached. The interval comes from order
statistics (the binomial rank interval), which assumes nothing about the timings' distribution;
latencies are skewed, so a mean +- t*s/sqrt(n) interval would be wrong. Below six values no rank
interval reaches 95 % and none is reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

CONFIDENCE = 0.95
T = TypeVar("T")


@dataclass(frozen=True)
class RepeatPolicy:
    """When to stop timing: at least ``min_repeats``, at most ``max_repeats`` or ``max_seconds``."""

    min_repeats: int
    max_repeats: int
    ci_target_pct: float
    max_seconds: float


@dataclass(frozen=True)
class MedianInterval:
    """The median of some timings and its distribution-free confidence interval."""

    median: float
    low: float
    high: float
    confidence: float

    @property
    def half_width_pct(self) -> float:
        """The interval's larger side, as a percentage of the median (the "+-" figure)."""
        return 100.0 * max(self.median - self.low, self.high - self.median) / self.median


def _below(n: int, k: int) -> float:
    """P(B < k) for B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k)) / 2**n


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> MedianInterval | None:
    """The rank interval [x(k), x(n-k+1)] with the narrowest k whose coverage still reaches
    ``confidence``; None when even [min, max] does not (fewer than 6 values at 95 %)."""
    n = len(values)
    ordered = sorted(values)
    alpha = 1.0 - confidence
    k = 0
    while _below(n, k + 1) <= alpha / 2:
        k += 1
    if k == 0:
        return None
    coverage = 1.0 - 2.0 * _below(n, k)
    return MedianInterval(float(np.median(ordered)), ordered[k - 1], ordered[n - k], coverage)


def coefficient_of_variation(values: list[float]) -> float | None:
    """Standard deviation over mean (sample, n-1); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = float(np.mean(values))
    return float(np.std(values, ddof=1)) / mean if mean else None


@dataclass(frozen=True)
class Repeats(Generic[T]):
    """What the timed repeats produced and why they stopped."""

    results: list[T]
    interval: MedianInterval | None
    stop_reason: str


def _stop_reason(
    n: int, interval: MedianInterval | None, policy: RepeatPolicy, elapsed: float
) -> str | None:
    if n < policy.min_repeats:
        return None
    width = f"+-{interval.half_width_pct:.1f} %" if interval else "no interval yet"
    if interval is not None and interval.half_width_pct <= policy.ci_target_pct:
        return f"median known to {width} (target +-{policy.ci_target_pct:g} %) after {n}"
    if n >= policy.max_repeats:
        return f"count cap {policy.max_repeats} reached at {width}"
    if elapsed >= policy.max_seconds:
        return f"time cap {policy.max_seconds:g} s reached after {n}, at {width}"
    return None


def repeat_until_stable(
    measure: Callable[[], T],
    latency: Callable[[T], float],
    policy: RepeatPolicy,
    clock: Callable[[], float] = time.perf_counter,
) -> Repeats[T]:
    """Call ``measure`` until ``policy`` says the median of ``latency(result)`` is known."""
    start = clock()
    results: list[T] = []
    while True:
        results.append(measure())
        interval = median_interval([latency(r) for r in results])
        reason = _stop_reason(len(results), interval, policy, clock() - start)
        if reason is not None:
            return Repeats(results, interval, reason)
