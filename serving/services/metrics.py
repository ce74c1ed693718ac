"""Request metrics: rolling percentiles as JSON, Prometheus series that aggregate across replicas.

Only completed requests enter the percentiles and histograms; GPU figures stay ``None`` on CPU
(and absent from Prometheus) rather than zero. Each store owns its registry, so several apps in one
process (the tests) never share series.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.telemetry import summarize
from serving.schemas import CacheStats, MetricsResponse, Percentiles
from serving.services.synthesis import RequestStats

OUTCOMES = ("ok", "error", "cancelled", "rejected")
ROUTES = ("tts", "openai", "stream")
# A saved voice answers in tens of milliseconds on a GPU; a long text on a CPU takes minutes.
SECONDS_BUCKETS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# A request that finds a free slot waits well under a millisecond; a full queue, seconds.
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, *SECONDS_BUCKETS)
# Requests decoding together in one frame step; 1 is the batch-1 path (max_batch is at most 8).
OCCUPANCY_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


def _percentiles(values: list[float]) -> Percentiles:
    stats = summarize(values)
    if not stats:
        return Percentiles()
    return Percentiles(p50=stats["p50"], p95=stats["p95"], mean=stats["mean"], count=len(values))


def _stage_means(recent: list[RequestStats]) -> dict[str, float | None]:
    """Mean prefill, decode and codec ms per frame over the requests that decoded frames."""
    means: dict[str, float | None] = {}
    for stage in ("prefill", "decode", "codec"):
        values = [s.stage_ms_per_frame[stage] for s in recent]
        known = [v for v in values if v is not None]
        means[stage] = float(np.mean(known)) if known else None
    return means


class MetricsStore:
    """The last ``window`` completed requests, lifetime outcome counters and Prometheus series."""

    def __init__(self, window: int = 256) -> None:
        self.started_at = time.time()
        self.outcomes: Counter[str] = Counter({name: 0 for name in OUTCOMES})
        self._recent: deque[RequestStats] = deque(maxlen=window)
        self.registry = CollectorRegistry()
        self._requests = PromCounter(
            "fishbench_requests",
            "Speech requests by route and outcome.",
            ["route", "outcome"],
            registry=self.registry,
        )
        self._latency = self._histogram("latency_seconds", "Request to last audio byte.")
        self._ttfa = self._histogram("ttfa_seconds", "Request to first audio.")
        self._rtf = self._histogram("rtf", "Compute seconds per audio second.", RTF_BUCKETS)
        self._queue_wait = self._histogram(
            "queue_wait_seconds",
            "Queued until a job thread took it, plus waits for a free decoding slot.",
            QUEUE_WAIT_BUCKETS,
        )
        self._occupancy = self._histogram(
            "batch_occupancy",
            "Per text chunk: mean requests decoding together during its frame steps.",
            OCCUPANCY_BUCKETS,
        )
        histograms = (self._latency, self._ttfa, self._rtf, self._queue_wait, self._occupancy)
        for route in ROUTES:  # zeros from the start, so a dashboard sees 0 rather than no series
            for outcome in OUTCOMES:
                self._requests.labels(route, outcome)
            for histogram in histograms:
                histogram.labels(route)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...] = SECONDS_BUCKETS
    ) -> Histogram:
        return Histogram(
            f"fishbench_{name}", doc, ["route"], buckets=buckets, registry=self.registry
        )

    def record(self, stats: RequestStats, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self._requests.labels(stats.route, outcome).inc()
        if outcome != "ok":
            return
        self._recent.append(stats)
        for histogram, value in (
            (self._latency, stats.latency_s),
            (self._ttfa, stats.ttfa_s),
            (self._rtf, stats.rtf),
            (self._queue_wait, stats.queue_wait_s),
        ):
            if value is not None:
                histogram.labels(stats.route).observe(value)
        for occupancy in stats.batch_occupancy:
            self._occupancy.labels(stats.route).observe(occupancy)

    def reject(self, route: str = "unknown") -> None:
        """A request refused before it was queued (429)."""
        self._unqueued(route, "rejected")

    def cancel(self, route: str) -> None:
        """A request whose client left before it was queued (while its text was prepared)."""
        self._unqueued(route, "cancelled")

    def _unqueued(self, route: str, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self._requests.labels(route, outcome).inc()

    def snapshot(
        self,
        queue_depth: int,
        queue_capacity: int,
        caches: dict[str, dict[str, Any]],
        frames_generated: int | None = None,
    ) -> MetricsResponse:
        recent = list(self._recent)
        vram = [s.peak_vram_mb for s in recent if s.peak_vram_mb is not None]
        util = [s.gpu_util_pct for s in recent if s.gpu_util_pct is not None]
        occupancy = [value for s in recent for value in s.batch_occupancy]
        return MetricsResponse(
            window=len(recent),
            uptime_s=time.time() - self.started_at,
            requests=dict(self.outcomes),
            latency_ms=_percentiles(
                [s.latency_s * 1000 for s in recent if s.latency_s is not None]
            ),
            ttfa_ms=_percentiles([s.ttfa_s * 1000 for s in recent if s.ttfa_s is not None]),
            rtf=_percentiles([s.rtf for s in recent if s.rtf is not None]),
            stream_rtf=_percentiles([s.stream_rtf for s in recent if s.stream_rtf is not None]),
            stage_ms_per_frame=_stage_means(recent),
            queue_wait_ms=_percentiles(
                [s.queue_wait_s * 1000 for s in recent if s.queue_wait_s is not None]
            ),
            frames_per_s=_percentiles(
                [s.frames_per_s for s in recent if s.frames_per_s is not None]
            ),
            batch_occupancy_mean=float(np.mean(occupancy)) if occupancy else None,
            peak_vram_mb=max(vram) if vram else None,
            gpu_util_pct=float(np.mean(util)) if util else None,
            queue_depth=queue_depth,
            queue_capacity=queue_capacity,
            caches={name: CacheStats(**stats) for name, stats in caches.items()},
            frames_generated=frames_generated,
            last=recent[-1].summary() if recent else None,
        )

    def exposition(self, snapshot: MetricsResponse, accept: str = "") -> tuple[bytes, str]:
        """The body and content type for a scrape (OpenMetrics when ``accept`` asks for it)."""
        encode, content_type = choose_encoder(accept)
        return encode(_Scrape(self.registry, snapshot)), content_type


class _Scrape(Collector):
    """The store's counters and histograms plus gauges read from one snapshot at scrape time."""

    def __init__(self, registry: CollectorRegistry, snapshot: MetricsResponse) -> None:
        self.registry = registry
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from _gauges(self.snapshot)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(f"fishbench_{name}", doc, value=value)


def _gauges(m: MetricsResponse) -> Iterator[Metric]:
    yield from _gauge("uptime_seconds", "Seconds since the service started.", m.uptime_s)
    yield from _gauge("queue_depth", "Requests queued or running.", m.queue_depth)
    yield from _gauge("queue_capacity", "Requests the queue holds.", m.queue_capacity)
    vram = None if m.peak_vram_mb is None else m.peak_vram_mb * 2**20
    yield from _gauge("peak_vram_bytes", f"Peak VRAM over the last {m.window} requests.", vram)
    util = None if m.gpu_util_pct is None else m.gpu_util_pct / 100
    yield from _gauge(
        "gpu_utilization_ratio", f"Mean GPU utilization over the last {m.window} requests.", util
    )
    yield from _cache_gauges(m.caches)
    if m.frames_generated is not None:
        yield CounterMetricFamily(
            "fishbench_frames_generated",
            "Frames the decoder made (cache hits excluded); rate() is the engine's throughput.",
            value=m.frames_generated,
        )


def _cache_gauges(caches: dict[str, CacheStats]) -> Iterator[Metric]:
    """Sizes as gauges; hits and misses as counters too, so ``rate()`` gives a recent hit ratio."""
    families: dict[str, Metric] = {
        "entries": GaugeMetricFamily("fishbench_cache_entries", "Cache entries.", labels=["cache"]),
        "hit_rate": GaugeMetricFamily(
            "fishbench_cache_hit_ratio", "Hits per lookup since start.", labels=["cache"]
        ),
        "hits": CounterMetricFamily("fishbench_cache_hits", "Cache hits.", labels=["cache"]),
        "misses": CounterMetricFamily("fishbench_cache_misses", "Cache misses.", labels=["cache"]),
        "bytes": GaugeMetricFamily(
            "fishbench_cache_bytes", "Bytes held (byte-bounded caches).", labels=["cache"]
        ),
        "limit_bytes": GaugeMetricFamily(
            "fishbench_cache_limit_bytes", "Byte bound (byte-bounded caches).", labels=["cache"]
        ),
    }
    for name, stats in sorted(caches.items()):
        for field, family in families.items():
            value = getattr(stats, field)
            if value is not None:
                family.add_metric([name], value)
    yield from (family for family in families.values() if family.samples)
