"""Adaptive repeats: a stable subject stops as soon as its median is known, a noisy one runs to
the cap. Subjects draw their timings from seeded distributions and advance a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from harness.trial.repeats import (
    RepeatPolicy,
    coefficient_of_variation,
    median_interval,
    repeat_until_stable,
)

POLICY = RepeatPolicy(min_repeats=6, max_repeats=20, ci_target_pct=3.0, max_seconds=600.0)


class FakeSubject:
    """Latencies from a seeded lognormal around 1 s; each call advances the clock by it."""

    def __init__(self, sigma: float, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.sigma = sigma
        self.now = 0.0
        self.calls = 0

    def measure(self) -> float:
        self.calls += 1
        latency = float(self.rng.lognormal(0.0, self.sigma))
        self.now += latency
        return latency

    def clock(self) -> float:
        return self.now


def run(subject: FakeSubject, policy: RepeatPolicy = POLICY):
    return repeat_until_stable(subject.measure, lambda t: t, policy, subject.clock)


def test_a_stable_subject_stops_at_the_minimum() -> None:
    subject = FakeSubject(sigma=0.005)
    repeats = run(subject)
    assert subject.calls == len(repeats.results) == 6
    assert repeats.interval.half_width_pct <= 3.0
    assert repeats.stop_reason.startswith("median known to")


def test_a_noisy_subject_runs_to_the_count_cap() -> None:
    subject = FakeSubject(sigma=0.5)
    repeats = run(subject)
    assert subject.calls == 20
    assert repeats.interval.half_width_pct > 3.0
    assert repeats.stop_reason.startswith("count cap 20 reached")


def test_the_time_cap_stops_a_noisy_subject_first() -> None:
    subject = FakeSubject(sigma=0.5)
    repeats = run(subject, RepeatPolicy(6, 20, 3.0, max_seconds=8.0))
    assert 6 <= subject.calls < 20
    assert repeats.stop_reason.startswith("time cap 8 s reached")


def test_min_repeats_hold_even_when_stable_early() -> None:
    subject = FakeSubject(sigma=0.001)
    repeats = run(subject, RepeatPolicy(10, 20, 3.0, 600.0))
    assert subject.calls == len(repeats.results) == 10


@pytest.mark.parametrize(("n", "rank"), [(6, 1), (9, 2), (20, 6)])
def test_median_interval_uses_the_binomial_ranks(n: int, rank: int) -> None:
    values = [float(v) for v in range(1, n + 1)]
    interval = median_interval(values)
    assert (interval.low, interval.high) == (values[rank - 1], values[n - rank])
    assert interval.confidence >= 0.95
    assert interval.median == pytest.approx(np.median(values))


def test_no_interval_below_six_values_and_cv_needs_two() -> None:
    assert median_interval([1.0, 1.1, 0.9, 1.0, 1.05]) is None
    assert coefficient_of_variation([1.0]) is None
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(np.sqrt(2) / 2)
