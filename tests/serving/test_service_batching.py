"""MAX_BATCH=4 on a live server (``python -m serving`` on the tiny checkpoint, the real batching
engine, a profile a throughput sweep exported): four OpenAI speech requests sent together are all
answered, decode together, and ``/health``, ``/metrics``, the Prometheus exposition and the UIs'
profile line say so.

Overlap comes from the frame budget, not from timing luck: each request may make 128 frames (the
seeds below run to the budget), so the first to arrive is still decoding long after the last
one, a few milliseconds behind it, has joined. The proof that they decoded together is what the
engine reports (each chunk's ``batch_occupancy``), never wall-clock time.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from engine.profile import EngineProfile, Provenance
from ui import view

pytestmark = pytest.mark.service

REQUESTS = 4
SEEDS = (1, 3, 5, 6)  # each runs to the frame budget on the tiny checkpoint
TEXT = "Four requests decode together in one frame step."


@pytest.fixture(scope="module")
def batching_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server: Callable
) -> Iterator:
    """MAX_BATCH=4 over a profile chosen for throughput, behind the shared servers' queue of two
    (QUEUE_SIZE=2)."""
    root = tmp_path_factory.mktemp("batching")
    profile = EngineProfile(provenance=Provenance(objective="throughput")).save(root / "p.yaml")
    live = ready_server(
        root,
        tiny_checkpoint,
        root / "voices",
        PROFILE_PATH=str(profile),
        MAX_BATCH=str(REQUESTS),
        MAX_NEW_TOKENS="128",
        NORMALIZE="false",
    )
    yield live
    live.stop()


def speak_together(server) -> list[bytes]:
    """Four ``/v1/audio/speech`` requests through the official client, released at once."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    start = threading.Barrier(REQUESTS, timeout=60)

    def speak(seed: int) -> bytes:
        start.wait()
        answer = client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input=TEXT,
            response_format="wav",
            extra_body={"seed": seed},
        )
        return answer.content

    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(speak, SEEDS))


def test_four_requests_at_once_decode_together_and_the_service_reports_it(
    batching_server,
) -> None:
    with batching_server.client() as http:
        health = http.get("/health").json()
        assert health["max_batch"] == REQUESTS and health["objective"] == "throughput"
        line = view.profile_line(health)
        assert "for throughput" in line and f"max batch {REQUESTS}" in line

        for wav in speak_together(batching_server):  # any status but 200 raises in the client
            audio, rate = sf.read(io.BytesIO(wav))
            assert rate == 44_100 and len(audio) > 0

        metrics = http.get("/metrics").json()
        prometheus = http.get("/metrics/prometheus").text

    assert metrics["requests"]["ok"] == REQUESTS
    # Four requests, more than QUEUE_SIZE: none waited for a job thread, none was refused.
    assert metrics["requests"]["rejected"] == 0
    assert metrics["queue_wait_ms"]["count"] == REQUESTS
    assert metrics["frames_per_s"]["count"] == REQUESTS and metrics["frames_per_s"]["p50"] > 0
    assert metrics["batch_occupancy_mean"] > 1

    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(prometheus)
        if family.name == "fishbench_batch_occupancy"
        for s in family.samples
        if s.labels.get("route") == "openai"
    }
    chunks = samples[("fishbench_batch_occupancy_count", None)]
    assert chunks >= REQUESTS
    assert samples[("fishbench_batch_occupancy_bucket", "1.0")] < chunks  # some decoded together
    assert samples[("fishbench_batch_occupancy_bucket", "4.0")] == chunks  # never more than four
