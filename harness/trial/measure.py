"""One trial, run inside its own spawned process: load, warm up, time the repeats, check fidelity.

The timed repeats run until the median latency's 95 % interval is within the scenario's target
(``harness.trial.repeats``), watched for other processes using the machine meanwhile
(``harness.trial.isolation``); the parent judges that disturbance against the sweep's limits.

Each repeat times ``synthesize`` (end-to-end latency, per-stage times, frames/s, memory) and then
``synthesize_stream`` (time to first audio, and the streamed total). Two calls, because while
streaming the codec decodes chunks in between decoder steps, so the decoder's clock would include
codec time. The baseline is upstream's ``generate()`` + one codec decode, whose first audio is its
last (upstream streaming sends whole segments). Everything before the timed repeats (compile,
graph capture, first calls on the scenario's inputs) is reported as ``compile_s``, never inside
latency. An engine with ``max_batch`` > 1 then streams ``max_batch`` requests at once
(``measure_concurrency``) for its throughput; one that decodes a request at a time gets the same
figures from its streamed repeats. Fidelity is measured last, against the fp32 run the sweep's
first candidate saved.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.audio_io import write_wav
from harness.trial.isolation import watch_isolation
from harness.trial.metrics import (
    concurrent_throughput,
    interval_metrics,
    roofline,
    single_stream_throughput,
    summarize_runs,
)
from harness.trial.record import BASELINE
from harness.trial.repeats import RepeatPolicy, repeat_until_stable

if TYPE_CHECKING:
    from engine.measure.fidelity import FidelityReference

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """What a trial times: a loaded pipeline behind one synthesize call."""

    synthesize: Callable[[], np.ndarray]
    stream: Callable[[], np.ndarray] | None  # None: first audio only comes with the whole result
    last_report: Callable[[], dict[str, Any]]
    load_s: float
    compile_s: float
    frame_bytes: Callable[[], dict[str, int]]  # perf model, for the last request's KV bucket
    active_knobs: dict[str, Any]
    fallbacks: list[str]
    max_batch: int = 1  # requests decoded together; above 1 the trial also runs concurrent rounds
    # Stream requests at once (``harness.bench.concurrency.stream_round``); None: one at a time.
    concurrent_round: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    close: Callable[[], None] = lambda: None  # stop what the subject runs beside the caller


def _request(job: dict[str, Any]) -> dict[str, Any]:
    s = job["scenario"]
    return {
        "text": s["text"],
        "reference_audio": job["reference_audio"],
        "reference_text": s["reference_text"] if job["reference_audio"] else None,
        "fixed_frames": s["fixed_frames"],
        "max_new_tokens": s["fixed_frames"],
        "temperature": s["temperature"],
        "top_p": s["top_p"],
        "repetition_penalty": s["repetition_penalty"],
        "seed": s["seed"],
    }


def load_candidate(job: dict[str, Any]) -> Subject:
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    t0 = time.perf_counter()
    engine = OptimizedFishSpeech.from_checkpoint(
        job["checkpoint"], EngineProfile.model_validate(job["knobs"])
    )
    load_s = time.perf_counter() - t0
    compile_s = engine.warmup(buckets=())  # the scenario's untimed runs build its buckets
    request = _request(job)

    # A seeded repeat would otherwise be served from the semantic cache instead of generated.
    def synthesize() -> np.ndarray:
        engine.semantic_cache.clear()
        return engine.synthesize(**request)

    def stream() -> np.ndarray:
        engine.semantic_cache.clear()
        return np.concatenate(list(engine.synthesize_stream(**request)))

    def concurrent_round(requests: list[dict[str, Any]]) -> dict[str, Any]:
        from harness.bench.concurrency import stream_round

        engine.semantic_cache.clear()
        return stream_round(engine, requests)

    return Subject(
        synthesize,
        stream,
        lambda: engine.last_report.as_dict(),
        load_s,
        compile_s,
        lambda: engine.frame_bytes().as_dict(),
        engine.active_profile.knobs(),
        [str(f) for f in engine.fallbacks],
        engine.max_batch,
        concurrent_round if engine.max_batch > 1 else None,
        engine.close,
    )


def load_baseline(job: dict[str, Any]) -> Subject:
    from engine.measure.baseline import UpstreamBaseline

    knobs = job["knobs"]
    t0 = time.perf_counter()
    baseline = UpstreamBaseline.from_checkpoint(
        job["checkpoint"], device=knobs["device"], compile=knobs["compile"]
    )
    load_s = time.perf_counter() - t0
    request = _request(job)
    return Subject(
        lambda: baseline.synthesize(**request),
        None,
        lambda: baseline.last_report.as_dict(),
        load_s,
        0.0,
        lambda: baseline.frame_bytes().as_dict(),
        dict(knobs),
        [],
    )


def fidelity_reference(job: dict[str, Any]) -> FidelityReference:
    """The sweep's fp32 reference run: read from the sweep folder, or generated and saved there by
    the first candidate that needs it (every candidate of a sweep compares against the same one,
    and the fp32 model need not be loaded once per trial)."""
    from engine.measure.fidelity import FidelityReference

    path = Path(job["fidelity_reference"])
    if path.is_file():
        log.info("fidelity reference read from %s", path)
        return FidelityReference.load(path)
    s = job["scenario"]
    reference = FidelityReference.build(
        job["checkpoint"],
        job["knobs"]["device"],
        s["text"],
        job["reference_audio"],
        s["reference_text"] if job["reference_audio"] else None,
        frames=s["fidelity_frames"],
        seed=s["seed"],
    )
    reference.save(path)
    log.info("fidelity reference generated in fp32 and saved to %s", path)
    return reference


def _fidelity(job: dict[str, Any]) -> tuple[dict[str, float] | None, str | None]:
    """Fidelity against fp32; a failure here gates the candidate out but keeps its speed figures."""
    from engine.engine import OptimizedFishSpeech
    from engine.measure.fidelity import compare_profile
    from engine.profile import EngineProfile

    try:
        reference = fidelity_reference(job)
        profile = EngineProfile.model_validate(job["knobs"])
        figures = compare_profile(
            OptimizedFishSpeech.from_checkpoint(job["checkpoint"], profile), reference
        )
    except Exception as exc:
        log.exception("fidelity measurement failed")
        return None, f"{type(exc).__name__}: {exc}"
    return figures, None


def repeat_policy(scenario: dict[str, Any]) -> RepeatPolicy:
    return RepeatPolicy(
        scenario["repeats"],
        scenario["max_repeats"],
        scenario["ci_target_pct"],
        scenario["max_repeat_s"],
    )


CONCURRENCY_FILE = "concurrency.json"  # the concurrent rounds' row, every request's figures
PEAKS = ("peak_allocated_mb", "peak_reserved_mb", "nvml_process_mb", "host_rss_mb")
SCREEN_NOTE = "screening: fidelity and WER are measured when the candidate is confirmed"


def _compile_cache_lookups(subject: Subject) -> dict[str, float]:
    """The warm-up's FX graph cache hits and misses (a miss compiled a graph: a cold warm-up),
    for a subject that compiled; the sweep's estimate learns cold and warm compile times from
    them."""
    knobs = subject.active_knobs
    modes = (knobs.get("compile_decode", "none"), knobs.get("compile_codec", "none"))
    if modes == ("none", "none") and not knobs.get("compile_prefill") and not knobs.get("compile"):
        return {}
    from engine.compile_cache import compile_counters

    counts = compile_counters()
    return {
        "fxgraph_cache_hit": float(counts["fxgraph_cache_hit"]),
        "fxgraph_cache_miss": float(counts["fxgraph_cache_miss"]),
    }


def load_subject(job: dict[str, Any]) -> Subject:
    """The upstream baseline or our engine, loaded and warmed up for the job's scenario."""
    return load_baseline(job) if job["kind"] == BASELINE else load_candidate(job)


def measure_request(subject: Subject) -> tuple[dict[str, Any], np.ndarray]:
    """One timed repeat: the one-shot report, with streaming's first-audio time and memory peaks."""
    audio = subject.synthesize()
    run = subject.last_report()
    if subject.stream is None:
        return {**run, "stream_total_s": run["total_s"]}, audio
    subject.stream()
    streamed = subject.last_report()
    run.update(
        ttfa_s=streamed["ttfa_s"],
        stream_total_s=streamed["total_s"],
        stream_rtf=streamed["stream_rtf"],
        stream_codec_ms_per_frame=streamed["codec_ms_per_frame"],
    )
    for key in PEAKS:
        values = [v for v in (run[key], streamed[key]) if v is not None]
        run[key] = max(values) if values else None
    return run, audio


def measure_concurrency(subject: Subject, job: dict[str, Any]) -> dict[str, Any]:
    """``max_batch`` requests at once on the subject's engine, as ``fishbench bench
    --concurrency`` times them: one untimed round (whatever this concurrency builds the first
    time), then ``scenario.concurrent_rounds`` timed ones. Each request has its own text and
    seed, the scenario's reference, frames and sampling. Returns the bench's row, with every
    timed request under ``requests`` and the untimed round's seconds."""
    from harness.bench.concurrency import concurrency_requests, concurrency_row

    s, c = job["scenario"], subject.max_batch
    sampling = {key: s[key] for key in ("temperature", "top_p", "repetition_penalty")}
    reference = job["reference_audio"], s["reference_text"]

    def one_round(index: int) -> dict[str, Any]:
        requests = concurrency_requests(c, index, s["fixed_frames"], *reference)
        return subject.concurrent_round([request | sampling for request in requests])

    t0 = time.perf_counter()
    one_round(0)
    untimed_s = time.perf_counter() - t0
    rounds = [one_round(index) for index in range(1, s["concurrent_rounds"] + 1)]
    log.info("concurrency %d: %d timed rounds after %.1f s untimed", c, len(rounds), untimed_s)
    requests = [q for r in rounds for q in r["requests"]]
    return concurrency_row(c, rounds) | {"untimed_round_s": untimed_s, "requests": requests}


def _concurrent_peaks(
    metrics: dict[str, float | None], requests: list[dict[str, Any]]
) -> dict[str, float | None]:
    """Memory peaks over the repeats and the concurrent requests: a batching engine holds the
    most while its slots decode together, and that is what the VRAM budget must hold."""
    peaks = {}
    for key in PEAKS:
        values = (metrics[key], *(q["report"].get(key) for q in requests))
        known = [v for v in values if v is not None]
        peaks[key] = max(known) if known else None
    return peaks


def run_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one baseline or candidate job; a plain dict (the parent builds the record)."""
    scenario = job["scenario"]
    subject = load_subject(job)
    t0 = time.perf_counter()
    for _ in range(scenario["warmup_runs"]):
        measure_request(subject)
    compile_s = subject.compile_s + time.perf_counter() - t0
    cache = _compile_cache_lookups(subject)
    with watch_isolation(job["knobs"]["device"]) as isolation:
        repeats = repeat_until_stable(
            partial(measure_request, subject),
            lambda done: done[0]["total_s"],
            repeat_policy(scenario),
        )
        row = measure_concurrency(subject, job) if subject.concurrent_round else None
    runs = [run for run, _ in repeats.results]
    out_dir = Path(job["out_dir"])
    write_wav(out_dir / "sample.wav", repeats.results[-1][1])
    metrics = summarize_runs(runs)
    if row is None:
        metrics.update(single_stream_throughput(runs))
    else:
        metrics.update(concurrent_throughput(row))
        metrics.update(_concurrent_peaks(metrics, row["requests"]))
        (out_dir / CONCURRENCY_FILE).write_text(json.dumps(row, indent=2, default=str))
    metrics.update(interval_metrics(repeats.interval, runs))
    metrics.update(load_s=subject.load_s, compile_s=compile_s, **cache)
    metrics.update({k: float(v) for k, v in isolation.items() if isinstance(v, int | float)})
    frame_bytes = subject.frame_bytes()
    subject.close()
    metrics.update({f"bytes_per_frame_{part}": n for part, n in frame_bytes.items()})
    metrics.update(roofline(metrics["frames_per_s"], frame_bytes["total"], job["bandwidth_gb_s"]))
    result = {
        "metrics": metrics,
        "runs": runs,
        "repeats_stop": repeats.stop_reason,
        "isolation": isolation,
        "active_knobs": subject.active_knobs,
        "fallbacks": subject.fallbacks,
    }
    if job["kind"] == BASELINE:
        return {
            **result,
            "fidelity": None,
            "fidelity_note": "the upstream baseline is the speed reference",
        }
    if not job.get("fidelity", True):
        return {**result, "fidelity": None, "fidelity_note": SCREEN_NOTE}
    del subject
    gc.collect()
    figures, error = _fidelity(job)
    return {**result, "fidelity": figures, "fidelity_note": error}
