"""Rolling request metrics (JSON) and the same figures as Prometheus text.

Only completed requests enter the percentiles; GPU figures stay ``None`` on CPU rather than zero.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import numpy as np

from serving.schemas import CacheStats, MetricsResponse, Percentiles
from serving.services.synthesis import RequestStats

OUTCOMES = ("ok", "error", "cancelled", "rejected")


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles()
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return Percentiles(
        p50=float(p50), p95=float(p95), mean=float(np.mean(values)), count=len(values)
    )


class MetricsStore:
    """The last ``window`` completed requests plus lifetime outcome counters."""

    def __init__(self, window: int = 256) -> None:
        self.started_at = time.time()
        self.outcomes: Counter[str] = Counter({name: 0 for name in OUTCOMES})
        self._recent: deque[RequestStats] = deque(maxlen=window)

    def record(self, stats: RequestStats, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if outcome == "ok":
            self._recent.append(stats)

    def reject(self) -> None:
        self.outcomes["rejected"] += 1

    def snapshot(
        self, queue_depth: int, queue_capacity: int, caches: dict[str, dict[str, Any]]
    ) -> MetricsResponse:
        recent = list(self._recent)
        vram = [s.peak_vram_mb for s in recent if s.peak_vram_mb is not None]
        util = [s.gpu_util_pct for s in recent if s.gpu_util_pct is not None]
        return MetricsResponse(
            window=len(recent),
            uptime_s=time.time() - self.started_at,
            requests=dict(self.outcomes),
            latency_ms=_percentiles(
                [s.latency_s * 1000 for s in recent if s.latency_s is not None]
            ),
            ttfa_ms=_percentiles([s.ttfa_s * 1000 for s in recent if s.ttfa_s is not None]),
            rtf=_percentiles([s.rtf for s in recent if s.rtf is not None]),
            peak_vram_mb=max(vram) if vram else None,
            gpu_util_pct=float(np.mean(util)) if util else None,
            queue_depth=queue_depth,
            queue_capacity=queue_capacity,
            caches={name: CacheStats(**stats) for name, stats in caches.items()},
            last=recent[-1].summary() if recent else None,
        )


def _line(name: str, value: float | None, labels: str = "") -> str | None:
    return None if value is None else f"fishbench_{name}{labels} {value:.6g}"


def prometheus_text(m: MetricsResponse) -> str:
    """Prometheus exposition format 0.0.4 for a snapshot."""
    out = [
        "# HELP fishbench_requests_total Speech requests by outcome.",
        "# TYPE fishbench_requests_total counter",
        *(f'fishbench_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(m.requests.items())),
    ]
    for name, unit, pct in (
        ("latency_seconds", 1000, m.latency_ms),
        ("ttfa_seconds", 1000, m.ttfa_ms),
        ("rtf", 1, m.rtf),
    ):
        out += [
            f"# HELP fishbench_{name} Rolling quantiles over the last {m.window} requests.",
            f"# TYPE fishbench_{name} summary",
        ]
        for q, value in (("0.5", pct.p50), ("0.95", pct.p95)):
            out.append(_line(name, None if value is None else value / unit, f'{{quantile="{q}"}}'))
        out.append(f"fishbench_{name}_count {pct.count}")
    gauges = {
        "peak_vram_mb": m.peak_vram_mb,
        "gpu_util_percent": m.gpu_util_pct,
        "queue_depth": m.queue_depth,
        "queue_capacity": m.queue_capacity,
        "uptime_seconds": m.uptime_s,
    }
    for name, value in gauges.items():
        out += [f"# TYPE fishbench_{name} gauge", _line(name, value)]
    out.append("# TYPE fishbench_cache_hit_ratio gauge")
    out += [
        _line("cache_hit_ratio", c.hit_rate, f'{{cache="{n}"}}')
        for n, c in sorted(m.caches.items())
    ]
    out.append("# TYPE fishbench_cache_entries gauge")
    out += [
        _line("cache_entries", c.entries, f'{{cache="{n}"}}') for n, c in sorted(m.caches.items())
    ]
    return "\n".join(line for line in out if line is not None) + "\n"
