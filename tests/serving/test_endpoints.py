"""Success paths of every endpoint against the live server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.service

SAMPLE_RATE = 44_100


def read_wav(data: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def test_health_reports_engine_and_profile(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ready"
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["compute_capability"] is None
    assert body["profile_source"] == "defaults"
    assert body["profile"]["quantization"] == body["quantization"] == "none"
    assert body["synthetic_checkpoint"] is True
    assert body["warmup_s"] is not None


def test_health_shows_no_absolute_path(client: httpx.Client, tiny_checkpoint: Path) -> None:
    """``/health`` answers without a key: it names the checkpoint folder served, not where this
    machine keeps it (the server's folder and the checkpoint's are apart here)."""
    body = client.get("/health").json()
    assert body["checkpoint"] == tiny_checkpoint.name
    text = json.dumps(body)
    assert str(tiny_checkpoint.parent) not in text and '"/' not in text, text


def test_tts_returns_wav_with_metric_headers(client: httpx.Client) -> None:
    response = client.post("/tts", data={"text": "Hello world.", "seed": "7"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert float(response.headers["x-latency-ms"]) > 0
    assert float(response.headers["x-ttfa-ms"]) > 0
    assert response.headers["x-peak-vram-mb"] == "n/a"  # CPU: absent, not zero
    assert response.headers["x-gpu-util-pct"] == "n/a"
    assert response.headers["x-seed"] == "7"
    assert read_wav(response.content).size > 0


def caches(client: httpx.Client) -> dict[str, dict]:
    return client.get("/metrics").json()["caches"]


def test_tts_same_seed_same_audio(client: httpx.Client) -> None:
    """Generated twice, not served from the semantic cache the second time (it is emptied in
    between, and its hits do not move); another seed is other audio."""
    form = {"text": "Reproducible speech.", "seed": "11", "format": "pcm"}
    first = client.post("/tts", data=form)
    assert client.post("/cache/clear").status_code == 200
    hits = caches(client)["semantic"]["hits"]
    second = client.post("/tts", data=form)
    assert caches(client)["semantic"]["hits"] == hits  # generated again, not a cache hit
    other = client.post("/tts", data={**form, "seed": "12"})
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content and len(first.content) > 0
    assert other.content != first.content


def test_tts_with_uploaded_reference(client: httpx.Client, spoken_wav: bytes) -> None:
    """The upload conditions the voice (other audio than the same seed without it), its codes are
    encoded once (a reference-cache miss) and found again for the same upload (a hit)."""
    data = {"text": "Cloned speech.", "reference_text": "Hello there.", "seed": "1"}
    files = {"speaker_file": ("ref.wav", spoken_wav, "audio/wav")}
    unconditioned = client.post("/tts", data=data)
    assert client.post("/cache/clear").status_code == 200
    before = caches(client)["reference"]
    cloned = client.post("/tts", data=data, files=files)
    encoded = caches(client)["reference"]
    again = client.post("/tts", data=data, files=files)
    found = caches(client)["reference"]
    assert unconditioned.status_code == cloned.status_code == again.status_code == 200
    assert read_wav(cloned.content).size > 0
    assert cloned.content != unconditioned.content
    assert again.content == cloned.content
    assert encoded["misses"] == before["misses"] + 1 and encoded["entries"] == 1
    assert found["hits"] == encoded["hits"] + 1 and found["misses"] == encoded["misses"]


def test_tts_speed_changes_duration_not_rate(client: httpx.Client) -> None:
    form = {"text": "Tempo test.", "seed": "5"}
    normal = read_wav(client.post("/tts", data=form).content)
    fast = read_wav(client.post("/tts", data={**form, "speed": "2.0"}).content)
    assert len(fast) == pytest.approx(len(normal) / 2, rel=0.1)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_tts_streams_each_format_as_one_file(client: httpx.Client, fmt: str) -> None:
    data = {"text": "First sentence. Second one.", "stream": "true", "format": fmt, "seed": "2"}
    with client.stream("POST", "/tts", data=data) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    with av.open(io.BytesIO(body)) as container:  # ffmpeg: streamed FLAC has no total length
        stream = container.streams.audio[0]
        assert stream.rate == SAMPLE_RATE
        assert sum(frame.samples for frame in container.decode(stream)) > 0


def test_tts_optimize_for_memory_sounds_like_the_plain_answer(client: httpx.Client) -> None:
    """The same seed through the chunked decoder (which path ran is checked in
    ``test_engine_cues``) gives the same samples, up to float-to-s16 rounding."""
    form = {"text": "Low memory.", "seed": "13", "format": "pcm"}
    plain = client.post("/tts", data=form)
    low = client.post("/tts", data={**form, "optimize_for_memory": "true"})
    assert plain.status_code == low.status_code == 200
    plain_pcm, low_pcm = (np.frombuffer(r.content, dtype="<i2") for r in (plain, low))
    assert plain_pcm.shape == low_pcm.shape and plain_pcm.size > 0
    assert np.abs(plain_pcm.astype(int) - low_pcm).max() <= 1


def test_long_text_is_split_into_ordered_chunks(client: httpx.Client) -> None:
    sentence = "This sentence is long enough that three of them need separate chunks, " * 3
    text = " ".join(sentence.strip() + "." for _ in range(3))
    body = {"input": text, "voice": "default", "response_format": "pcm", "stream_format": "sse"}
    events = sse_events(client.post("/v1/audio/speech", json=body))
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["metrics"]["chunks"] == 3


def sse_events(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
    ]


LONG_SENTENCES = [
    f"Sentence {word} is long enough that it needs a text chunk of its own on this server, "
    "since two of them together pass the three hundred characters a chunk may hold, which "
    "is what this test wants."
    for word in ("one", "two", "three")
]


def test_long_text_keeps_the_voice_and_seeds_each_chunk_in_turn(
    client: httpx.Client, spoken_wav: bytes
) -> None:
    """Three chunks in a voice with seed 40 are the three sentences each asked for alone in the
    same voice with seeds 40, 41 and 42, sample for sample: the voice is kept for every chunk
    and the seed goes up by one per chunk (each alone is generated, not taken from a cache)."""
    files = {"audio": ("voice.wav", spoken_wav, "audio/wav")}
    saved = client.post("/voices", data={"voice_id": "long-text", "transcript": "Hi."}, files=files)
    assert saved.status_code == 201, saved.text
    try:
        check_long_text_in(client, "long-text")
    finally:
        client.delete("/voices/long-text")


def check_long_text_in(client: httpx.Client, voice: str) -> None:
    def pcm(text: str, seed: int) -> bytes:
        body = {"input": text, "voice": voice, "response_format": "pcm", "seed": seed}
        response = client.post("/v1/audio/speech", json={**body, "normalize": False})
        assert response.status_code == 200, response.text
        return response.content

    assert client.post("/cache/clear").status_code == 200
    whole = pcm(" ".join(LONG_SENTENCES), 40)
    alone = []
    for i, sentence in enumerate(LONG_SENTENCES):
        assert client.post("/cache/clear").status_code == 200
        alone.append(pcm(sentence, 40 + i))
    assert all(alone) and whole == b"".join(alone)
    unconditioned = client.post(
        "/v1/audio/speech",
        json={"input": LONG_SENTENCES[1], "seed": 41, "response_format": "pcm", "normalize": False},
    )
    assert unconditioned.content != alone[1]  # the voice is what made the chunks match


def test_speech_sse_deltas_concatenate_to_one_file(client: httpx.Client) -> None:
    body = {
        "input": "Events please.",
        "voice": "alloy",
        "response_format": "wav",
        "stream_format": "sse",
    }
    events = sse_events(client.post("/v1/audio/speech", json=body))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert deltas and read_wav(audio).size > 0
    assert events[-1]["usage"]["output_tokens"] > 0


def test_models_and_openai_voice_list(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and "tts-1" in {m["id"] for m in models["data"]}
    voices = client.get("/v1/audio/voices").json()["voices"]
    assert voices[0] == {"id": "default", "name": "default (unconditioned)"}


def test_emotions_lists_s1_markers(client: httpx.Client) -> None:
    markers = client.get("/emotions").json()["markers"]
    assert {"(angry)", "(sad)", "(excited)", "(surprised)"} <= set(markers["emotion"])
    assert "(whispering)" in markers["tone"] and "(laughing)" in markers["effect"]


def test_metrics_json_and_prometheus(client: httpx.Client) -> None:
    assert client.post("/tts", data={"text": "Count me."}).status_code == 200
    metrics = client.get("/metrics").json()
    assert metrics["requests"]["ok"] >= 1
    assert (
        metrics["latency_ms"]["p50"] > 0
        and metrics["latency_ms"]["p95"] >= metrics["latency_ms"]["p50"]
    )
    assert metrics["ttfa_ms"]["p50"] > 0 and metrics["rtf"]["p50"] > 0
    assert metrics["peak_vram_mb"] is None and metrics["gpu_util_pct"] is None
    assert set(metrics["caches"]) == {"reference", "semantic", "voice_prefix"}
    text = client.get("/metrics/prometheus")
    assert text.headers["content-type"].startswith("text/plain")
    assert 'fishbench_latency_seconds_bucket{le="+Inf",route="tts"}' in text.text
    assert 'fishbench_cache_hit_ratio{cache="semantic"}' in text.text


def test_cache_clear_empties_engine_caches(client: httpx.Client) -> None:
    form = {"text": "Cache me.", "seed": "3"}
    client.post("/tts", data=form)
    client.post("/tts", data=form)
    assert client.get("/metrics").json()["caches"]["semantic"]["entries"] > 0
    cleared = client.post("/cache/clear").json()["cleared"]
    assert cleared["semantic"] > 0
    assert client.get("/metrics").json()["caches"]["semantic"]["entries"] == 0
