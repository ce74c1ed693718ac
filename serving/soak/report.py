"""What the soak prints each interval and at the end, and whether it passed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from engine.telemetry import figure, summarize
from serving.soak.load import LATE_S, Result

MAX_RSS_GROWTH = 0.10


@dataclass(frozen=True)
class Tick:
    """One reporting interval: the server's RSS at its end and the requests that ended in it."""

    index: int
    elapsed_s: float
    rss_bytes: int | None
    results: list[Result]


def percentiles(results: list[Result]) -> tuple[float | None, float | None]:
    """p50 and p95 seconds of the answered speech requests."""
    elapsed = [r.elapsed_s for r in results if r.speech and r.status is not None]
    stats = summarize(elapsed)
    return stats.get("p50"), stats.get("p95")


def statuses(results: list[Result]) -> str:
    counts = Counter("error" if r.status is None else str(r.status) for r in results)
    return " ".join(f"{status}:{n}" for status, n in sorted(counts.items())) or "none"


def _seconds(value: float | None) -> str:
    return figure(value, ".2f", " s")


def megabytes(value: int | None) -> str:
    return figure(None if value is None else value / 2**20, ".1f", " MB")


def format_tick(tick: Tick) -> str:
    p50, p95 = percentiles(tick.results)
    late = sum(r.late_s > LATE_S for r in tick.results)
    return (
        f"min {tick.elapsed_s / 60:5.2f}  rss {megabytes(tick.rss_bytes):>10}  "
        f"requests {len(tick.results):4d} [{statuses(tick.results)}]  "
        f"speech p50 {_seconds(p50)} p95 {_seconds(p95)}  late {late}"
    )


def rss_growth(rss: list[int | None]) -> float | None:
    """Growth of the last sample over the first (the end of the first interval), or None."""
    known = [value for value in rss if value is not None]
    return (known[-1] - known[0]) / known[0] if len(known) >= 2 else None


def verdict(rss: list[int | None], results: list[Result]) -> list[str]:
    """Why the soak failed (empty when it passed)."""
    failures = []
    growth = rss_growth(rss)
    if growth is not None and growth > MAX_RSS_GROWTH:
        failures.append(
            f"RSS grew {growth:.1%} after the first interval (limit {MAX_RSS_GROWTH:.0%})"
        )
    problems = Counter(r.problem for r in results if r.problem is not None)
    failures += [f"{n} x {problem}" for problem, n in problems.most_common()]
    return failures


def summary(ticks: list[Tick], results: list[Result], failures: list[str]) -> list[str]:
    """Per kind: count, statuses, p50/p95; then RSS, late starts and the verdict."""
    lines = [f"{'kind':<16}{'n':>5}  {'p50':>8}  {'p95':>8}  statuses"]
    for kind in sorted({r.kind for r in results}):
        of_kind = [r for r in results if r.kind == kind]
        elapsed = [r.elapsed_s for r in of_kind if r.status is not None]
        stats = summarize(elapsed)
        p50, p95 = stats.get("p50"), stats.get("p95")
        lines.append(
            f"{kind:<16}{len(of_kind):>5}  {_seconds(p50):>8}  {_seconds(p95):>8}  "
            f"{statuses(of_kind)}"
        )
    rss = [t.rss_bytes for t in ticks]
    known = [v for v in rss if v is not None]
    first, last, peak = (known[0], known[-1], max(known)) if known else (None, None, None)
    growth = rss_growth(rss)
    lines.append(
        f"rss after first interval {megabytes(first)}, last {megabytes(last)}, "
        f"peak {megabytes(peak)}, growth {figure(growth, '+.1%')}"
    )
    late = sum(r.late_s > LATE_S for r in results)
    lines.append(f"requests {len(results)} [{statuses(results)}], late starts {late}")
    lines.append("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return lines
