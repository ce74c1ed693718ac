"""Prometheus exposition via prometheus_client: parsed as a scraper would, checked against JSON."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.services.metrics import MetricsStore
from serving.services.synthesis import RequestStats

HISTOGRAMS = ("fishbench_latency_seconds", "fishbench_ttfa_seconds", "fishbench_rtf")


def parse(text: str) -> dict[str, tuple[str, list[Sample]]]:
    """Family name -> (type, samples)."""
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def by_outcome(samples: list[Sample]) -> dict[str, float]:
    """``fishbench_requests_total`` summed over routes."""
    totals: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.name == "fishbench_requests_total":
            totals[sample.labels["outcome"]] += sample.value
    return dict(totals)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return next(s.value for s in samples if s.name == name and s.labels.items() >= labels.items())


def stats(route: str, **report: float) -> RequestStats:
    """One second of audio that took 0.5 s to make, first audio after 0.1 s."""
    return RequestStats(
        received_at=0.0,
        sample_rate=44_100,
        seed=1,
        route=route,
        first_audio_at=0.1,
        finished_at=0.5,
        audio_samples=44_100,
        reports=[{"total_s": 0.5, **report}],
    )


def scrape(client: httpx.Client) -> tuple[dict, dict[str, tuple[str, list[Sample]]]]:
    """JSON and Prometheus views of the same moment (retried if a request ended in between)."""
    for _ in range(5):
        before = client.get("/metrics").json()
        response = client.get("/metrics/prometheus")
        after = client.get("/metrics").json()
        if before["requests"] == after["requests"]:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=")
            return after, parse(response.text)
    raise AssertionError("requests kept finishing while scraping")


@pytest.mark.service
def test_prometheus_histograms_and_counters_match_json(client: httpx.Client) -> None:
    assert client.post("/tts", data={"text": "Scrape me.", "seed": "4"}).status_code == 200
    speech = {"input": "And me.", "voice": "default", "response_format": "wav"}
    assert client.post("/v1/audio/speech", json=speech).status_code == 200
    metrics, families = scrape(client)

    for name in HISTOGRAMS:
        kind, samples = families[name]
        assert kind == "histogram"
        for route in ("tts", "openai"):
            buckets = [
                s for s in samples if s.name == f"{name}_bucket" and s.labels["route"] == route
            ]
            counts = [s.value for s in buckets]
            assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
            assert counts[-1] == value(samples, f"{name}_count", route=route) >= 1
            assert value(samples, f"{name}_sum", route=route) > 0
    latency = families["fishbench_latency_seconds"][1]
    observed = sum(s.value for s in latency if s.name == "fishbench_latency_seconds_count")
    assert observed == metrics["requests"]["ok"]

    kind, requests = families["fishbench_requests"]
    assert kind == "counter"
    assert by_outcome(requests) == metrics["requests"]

    caches = families["fishbench_cache_entries"][1]
    for name, cache in metrics["caches"].items():
        assert value(caches, "fishbench_cache_entries", cache=name) == cache["entries"]
        hit_ratio = families["fishbench_cache_hit_ratio"][1]
        assert value(hit_ratio, "fishbench_cache_hit_ratio", cache=name) == pytest.approx(
            cache["hit_rate"]
        )
    assert (
        value(families["fishbench_queue_capacity"][1], "fishbench_queue_capacity")
        == (metrics["queue_capacity"])
    )
    kind, frames = families["fishbench_frames_generated"]
    assert kind == "counter" and metrics["frames_generated"] > 0
    assert value(frames, "fishbench_frames_generated_total") >= metrics["frames_generated"]
    assert "fishbench_peak_vram_bytes" not in families  # CPU: absent, not zero
    assert "fishbench_gpu_utilization_ratio" not in families


@pytest.mark.service
def test_prometheus_speaks_openmetrics_when_asked(client: httpx.Client) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    response = client.get("/metrics/prometheus", headers={"accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_each_store_owns_its_registry() -> None:
    first, second = MetricsStore(), MetricsStore()
    first.record(stats("tts"), "ok")
    first.reject("openai")
    empty = second.snapshot(0, 2, {})
    requests = parse(second.exposition(empty)[0].decode())["fishbench_requests"][1]
    assert set(by_outcome(requests).values()) == {0.0}
    families = parse(first.exposition(first.snapshot(0, 2, {}))[0].decode())
    samples = families["fishbench_requests"][1]
    assert value(samples, "fishbench_requests_total", route="tts", outcome="ok") == 1
    assert value(samples, "fishbench_requests_total", route="openai", outcome="rejected") == 1
    rtf = families["fishbench_rtf"][1]
    assert value(rtf, "fishbench_rtf_bucket", route="tts", le="0.5") == 1
    assert value(rtf, "fishbench_rtf_bucket", route="tts", le="0.2") == 0


def test_gpu_gauges_appear_when_measured() -> None:
    store = MetricsStore()
    store.record(stats("openai", peak_allocated_mb=512.0, gpu_util_pct=80.0), "ok")
    caches = {"voice_prefix": {"entries": 1, "hits": 2, "misses": 1, "hit_rate": 2 / 3}}
    body = store.exposition(store.snapshot(1, 8, caches))[0].decode()
    families = parse(body)
    assert value(families["fishbench_peak_vram_bytes"][1], "fishbench_peak_vram_bytes") == 2**29
    util = families["fishbench_gpu_utilization_ratio"][1]
    assert value(util, "fishbench_gpu_utilization_ratio") == pytest.approx(0.8)
    hits = families["fishbench_cache_hits"]
    assert hits[0] == "counter" and value(hits[1], "fishbench_cache_hits_total") == 2
    assert "fishbench_cache_bytes" not in families  # only byte-bounded caches report bytes
    assert value(families["fishbench_queue_depth"][1], "fishbench_queue_depth") == 1


def test_queue_wait_frames_per_second_and_batch_occupancy_come_from_the_reports() -> None:
    """Queue wait is queued -> a job thread took it, plus the engine's wait for a slot
    (``queue_s``); frames/s and occupancy count decoded chunks only: a semantic cache hit ran no
    frame step."""
    store = MetricsStore()
    before = store.snapshot(0, 2, {})
    assert before.batch_occupancy_mean is None and before.queue_wait_ms.count == 0

    batched = stats("openai", frames=100, decode_s=2.0, batch_occupancy=3.0, queue_s=0.25)
    batched.queued_at, batched.started_at = 0.0, 0.5
    cached = stats("openai", frames=40, decode_s=0.0, semantic_cache_hit=True)
    cached.queued_at, cached.started_at = 0.0, 0.0
    alone = stats("tts", frames=50, decode_s=0.5, batch_occupancy=1.0)
    alone.queued_at, alone.started_at = 0.0, 0.0
    for request in (batched, cached, alone):
        store.record(request, "ok")

    snapshot = store.snapshot(0, 2, {})
    assert snapshot.batch_occupancy_mean == pytest.approx(2.0)  # (3 + 1) / 2, not the cache hit
    assert snapshot.queue_wait_ms.count == 3
    assert snapshot.queue_wait_ms.mean == pytest.approx(250)  # (750 + 0 + 0) / 3
    assert snapshot.frames_per_s.count == 2 and snapshot.frames_per_s.mean == pytest.approx(75)
    assert batched.summary()["queue_wait_ms"] == pytest.approx(750)
    assert batched.summary()["frames_per_s"] == pytest.approx(50)

    families = parse(store.exposition(snapshot)[0].decode())
    kind, occupancy = families["fishbench_batch_occupancy"]
    assert kind == "histogram"
    assert value(occupancy, "fishbench_batch_occupancy_bucket", route="openai", le="2.0") == 0
    assert value(occupancy, "fishbench_batch_occupancy_bucket", route="openai", le="3.0") == 1
    assert value(occupancy, "fishbench_batch_occupancy_bucket", route="tts", le="1.0") == 1
    waits = families["fishbench_queue_wait_seconds"][1]
    assert value(waits, "fishbench_queue_wait_seconds_count", route="openai") == 2
    assert value(waits, "fishbench_queue_wait_seconds_sum", route="openai") == pytest.approx(0.75)


def test_stage_times_per_frame_and_the_streamed_rtf_come_from_the_reports_and_the_chunks() -> None:
    """Stage milliseconds per frame sum a request's decoded chunks over its frames; the streamed
    RTF is the time from the first audio chunk to the last over the audio after the first."""
    store = MetricsStore()
    two_chunks = stats("tts", frames=40, prefill_s=0.2, decode_s=0.8, codec_s=0.4)
    two_chunks.reports.append({"total_s": 0.5, "frames": 60, "decode_s": 1.2, "codec_s": 0.6})
    two_chunks.first_chunk_samples, two_chunks.last_audio_at = 4_410, 0.91  # 0.1 s, then 0.9 s
    cached = stats("tts", frames=40, decode_s=0.0, semantic_cache_hit=True)
    for request in (two_chunks, cached):
        store.record(request, "ok")
    assert two_chunks.stage_ms_per_frame == pytest.approx(
        {"prefill": 2.0, "decode": 20.0, "codec": 10.0}
    )
    assert two_chunks.stream_rtf == pytest.approx((0.91 - 0.1) / 0.9)
    assert cached.stream_rtf is None  # one chunk: nothing after the first
    snapshot = store.snapshot(0, 2, {})
    assert snapshot.stream_rtf.count == 1 and snapshot.stream_rtf.p50 == pytest.approx(0.9)
    assert snapshot.stage_ms_per_frame == pytest.approx(
        {"prefill": 2.0, "decode": 20.0, "codec": 10.0}
    )
    assert two_chunks.summary()["stream_rtf"] == pytest.approx(0.9)
