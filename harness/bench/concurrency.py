"""``fishbench bench --concurrency``: what continuous batching buys, requests at once on one engine.

For each concurrency ``c`` of the list, ``c`` threads released together by a barrier each stream
one request from the same engine: its own text and seed, the bench's saved voice, and the same
fixed frame count, so every request makes the same frames and only the sharing differs. The
engine's ``max_batch`` holds the largest ``c`` at every level, so ``c = 1`` and ``c = 8`` measure
the same engine. Before each level's timed rounds one untimed round runs at that level (a new
batch size must not compile in the timed part). The engine runs in a spawned child process of
its own, as every bench row does.

The figures (``concurrency_row``): aggregate frames/s end to end (codec included), aggregate
frames/s of the decode phase, each request's own frames/s and RTF, time to first audio as the
caller sees it, and the engine's queue wait and batch occupancy; the aggregate figures also as a
ratio to ``c = 1`` of the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# One text per concurrent request (a batch of identical prompts would share more than real
# traffic does): the bench's own sentence first, then others of about its length.
CONCURRENT_TEXTS = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest.",
    "The weather was calm that evening, so we walked along the river and talked about music.",
    "A gentle breeze drifted over the quiet harbor as the boats came home before the sunset.",
    "She opened the old wooden box and found a stack of letters tied with a faded blue ribbon.",
    "Every morning the baker lights the oven early, long before the first customers arrive.",
    "The train was late again, so the passengers read their newspapers and waited patiently.",
    "High in the mountains the snow had melted, and small streams ran down towards the valley.",
    "He tuned the guitar slowly, played a few soft chords, and then began to sing an old song.",
)
SEED_STRIDE = 100  # round r's request i has seed r * SEED_STRIDE + i: no round repeats a seed
AGGREGATES = ("aggregate_frames_per_s", "aggregate_decode_frames_per_s")


def concurrency_level(raw: str) -> int:
    """argparse type of ``--concurrency``: an integer the engine's ``max_batch`` can hold."""
    from engine.profile import MAX_BATCH

    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(
            f"concurrency must be 1 to {MAX_BATCH} (the engine's max_batch limit), got {value}"
        )
    return value


def series_knobs(options: dict[str, Any], levels: Sequence[int]) -> tuple[dict[str, Any], int]:
    """A row's knobs with ``max_batch`` raised to hold the largest level where it does not, and
    the ``max_batch`` it asked for: every level runs on this one profile."""
    asked = int(options.get("max_batch", 1))
    return options | {"max_batch": max(asked, *levels)}, asked


def concurrency_requests(
    concurrency: int, round_index: int, frames: int, reference: str | None, reference_text: str
) -> list[dict[str, Any]]:
    """The keyword arguments of round ``round_index``'s ``concurrency`` requests: each its own
    text and a seed no other round uses, all ``frames`` frames exactly."""
    return [
        {
            "text": CONCURRENT_TEXTS[i % len(CONCURRENT_TEXTS)],
            "reference_audio": reference,
            "reference_text": reference_text if reference else None,
            "fixed_frames": frames,
            "max_new_tokens": frames,
            "seed": round_index * SEED_STRIDE + i,
        }
        for i in range(concurrency)
    ]


def stream_round(engine: Any, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream ``requests`` from ``engine`` in one thread each, released together by a barrier.

    Times are seconds from the first thread's release; each thread reads its own
    ``engine.last_report`` (per thread in a batching engine) right after its stream ends.
    """
    barrier = threading.Barrier(len(requests))
    records: list[dict[str, Any] | None] = [None] * len(requests)
    errors: list[BaseException] = []

    def one(index: int) -> None:
        request = requests[index]
        try:
            barrier.wait()
            start = time.perf_counter()
            first, samples = None, 0
            for chunk in engine.synthesize_stream(**request):
                first = first or time.perf_counter()
                samples += len(chunk)
            end = time.perf_counter()
            records[index] = {
                "index": index,
                "seed": request["seed"],
                "text": request["text"],
                "start": start,
                "first_audio": first if first is not None else end,
                "end": end,
                "samples": samples,
                "report": engine.last_report.as_dict(),
            }
        except BaseException as exc:  # re-raised in the calling thread
            barrier.abort()
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"bench-{i}") for i in range(len(requests))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (real or errors)[0]
    t0 = min(r["start"] for r in records)
    for r in records:
        for key in ("start", "first_audio", "end"):
            r[f"{key}_s"] = r.pop(key) - t0
        asked, report = requests[r["index"]]["fixed_frames"], r["report"]
        if report["semantic_cache_hit"]:
            raise RuntimeError(f"request {r['index']} came from the semantic cache, not decoded")
        if report["frames"] != asked:
            raise RuntimeError(f"request {r['index']} made {report['frames']} frames, not {asked}")
    return {"requests": records}


def _graphs_built() -> int:
    """Graphs dynamo has built in this process so far (a compile in a timed round shows here)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure_concurrency(job: dict[str, Any]) -> dict[str, Any]:
    """In the series' child: load the engine once, warm it up, then per level one untimed round
    and ``repeats`` timed rounds."""
    import torch

    from engine.compile_cache import COMPILE_CACHE_ENV
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    os.environ[COMPILE_CACHE_ENV] = job["compile_cache"]
    t0 = time.perf_counter()
    engine = OptimizedFishSpeech.from_checkpoint(
        job["checkpoint"], EngineProfile.model_validate(job["knobs"])
    )
    load_s = time.perf_counter() - t0
    try:
        return _measure_levels(engine, job) | {
            "load_s": load_s,
            "threads": torch.get_num_threads(),
            "active_profile": engine.active_profile.knobs(),
            "fallbacks": [str(f) for f in engine.fallbacks],
        }
    finally:
        engine.close()  # the batch scheduler's thread


def _measure_levels(engine: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, then per level one untimed round and ``repeats`` timed rounds."""
    warmup_s = engine.warmup(buckets=_buckets_needed(engine, job))
    rounds_run = 0

    def one_round(c: int) -> dict[str, Any]:
        nonlocal rounds_run
        engine.semantic_cache.clear()  # seeds differ per round already; this makes it certain
        reference = job["reference_audio"], job["reference_text"]
        requests = concurrency_requests(c, rounds_run, job["frames"], *reference)
        rounds_run += 1
        return stream_round(engine, requests)

    levels: dict[int, dict[str, Any]] = {}
    for c in job["levels"]:
        t0 = time.perf_counter()
        one_round(c)  # untimed: whatever this concurrency builds the first time
        untimed_s = time.perf_counter() - t0
        graphs = _graphs_built()
        rounds = [one_round(c) for _ in range(job["repeats"])]
        built = _graphs_built() - graphs
        if built:
            log.warning("concurrency %d: %d graph(s) compiled during the timed rounds", c, built)
        levels[c] = {"rounds": rounds, "untimed_round_s": untimed_s, "graphs_in_timed": built}
        log.info("concurrency %d: %d timed rounds", c, len(rounds))
    return {"levels": levels, "warmup_s": warmup_s}


def _buckets_needed(engine: Any, job: dict[str, Any]) -> list[int]:
    """The KV buckets the rounds' requests attend over: warm-up builds the compiled step for
    those (at every batch size) and no other. All of a profile's buckets would be minutes per
    graph at full size on a CPU, for buckets no round reaches."""
    from engine.profile import kv_bucket

    audio, text = job["reference_audio"], job["reference_text"]
    codes = engine.reference_codes(audio)[0] if audio else None
    texts = CONCURRENT_TEXTS[: max(job["levels"])]
    lengths = [engine.build_prompt(t, codes, text if audio else None).shape[1] for t in texts]
    limit = engine.active_profile.max_seq_len
    return sorted({kv_bucket(n + job["frames"], limit) for n in lengths})


def _request_figures(r: dict[str, Any]) -> dict[str, float | None]:
    """One request's own figures, from its timestamps (caller's view) and its engine report."""
    wall = r["end_s"] - r["start_s"]
    report = r["report"]
    audio_s = report["audio_s"]
    return {
        "wall_s": wall,
        "frames_per_s": report["frames"] / wall if wall > 0 else None,
        "rtf": wall / audio_s if audio_s > 0 else None,
        "ttfa_s": r["first_audio_s"] - r["start_s"],
        "queue_s": report.get("queue_s", 0.0),
        "batch_occupancy": report.get("batch_occupancy", 1.0),
        # From the round's start to this request's last frame: its start, then the engine's
        # stages before its last frame (reference lookup, slot wait, prefill, frame steps).
        "decode_end_s": r["start_s"]
        + sum(report.get(k, 0.0) for k in ("encode_s", "queue_s", "prefill_s", "decode_s")),
    }


def _round_aggregates(requests: list[dict[str, Any]]) -> dict[str, float]:
    """One round's aggregate throughput: all its frames over its wall time, end to end and over
    the decode phase (up to the last request's last frame, codec work after it excluded)."""
    frames = sum(r["report"]["frames"] for r in requests)
    start = min(r["start_s"] for r in requests)
    wall = max(r["end_s"] for r in requests) - start
    decode = max(_request_figures(r)["decode_end_s"] for r in requests) - start
    return {
        "frames": frames,
        "wall_s": wall,
        "decode_wall_s": decode,
        "aggregate_frames_per_s": frames / wall,
        "aggregate_decode_frames_per_s": frames / decode,
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def concurrency_row(concurrency: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one concurrency from its timed rounds (each ``{"requests": [...]}`` as
    ``stream_round`` returns it): aggregate figures are the median over rounds, per-request
    figures pool every request of every round."""
    from engine.telemetry import summarize

    if not rounds or any(len(r["requests"]) != concurrency for r in rounds):
        raise ValueError(f"every round of concurrency {concurrency} needs {concurrency} requests")
    per_round = [_round_aggregates(r["requests"]) for r in rounds]
    each = [_request_figures(q) for r in rounds for q in r["requests"]]
    row: dict[str, Any] = {"concurrency": concurrency, "rounds": len(rounds)}
    for key in AGGREGATES:
        spread = summarize([a[key] for a in per_round])
        row[key] = spread["p50"]
        row[f"{key}_spread"] = (spread["max"] - spread["min"]) / spread["p50"]
        row[f"{key}_rounds"] = [a[key] for a in per_round]
    ttfa = summarize([q["ttfa_s"] for q in each])
    rtf = [q["rtf"] for q in each]
    return row | {
        "frames_per_request": rounds[0]["requests"][0]["report"]["frames"],
        "wall_s_rounds": [a["wall_s"] for a in per_round],
        "decode_wall_s_rounds": [a["decode_wall_s"] for a in per_round],
        "per_request_frames_per_s": _mean([q["frames_per_s"] for q in each]),
        "per_request_frames_per_s_each": [q["frames_per_s"] for q in each],
        "per_request_rtf": rtf,
        "per_request_rtf_max": max((v for v in rtf if v is not None), default=None),
        "ttfa_p50_s": ttfa["p50"],
        "ttfa_p95_s": ttfa["p95"],
        "ttfa_s": [q["ttfa_s"] for q in each],
        "queue_s": _mean([q["queue_s"] for q in each]),
        "batch_occupancy": _mean([q["batch_occupancy"] for q in each]),
    }


def concurrency_rows(name: str, levels: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per concurrency of one engine row, in rising concurrency, with the aggregate
    figures' ratio to that row's concurrency 1 (None where 1 was not measured)."""
    rows = [{"row": name} | concurrency_row(c, levels[c]) for c in sorted(levels)]
    single = next((r for r in rows if r["concurrency"] == 1), None)
    for r in rows:
        r["ratio_to_concurrency_1"] = {
            key: r[key] / single[key] if single else None for key in AGGREGATES
        }
    return rows


def engine_rows(rows: list[Any], only: list[str] | None) -> list[Any]:
    """The rows a concurrency run measures: those of ``only`` (every one must be an engine row:
    upstream decodes one request at a time), else this device's first engine row."""
    from engine.errors import ConfigError

    engines = [r for r in rows if r.kind == "engine"]
    if not only:
        return engines[:1]
    unknown = [n for n in only if n not in {r.name for r in rows}]
    upstream = [r.name for r in rows if r.name in only and r.kind != "engine"]
    if unknown or upstream:
        wrong = [f"unknown: {', '.join(unknown)}"] if unknown else []
        wrong += (
            [f"upstream decodes one request at a time: {', '.join(upstream)}"] if upstream else []
        )
        names = ", ".join(r.name for r in engines)
        raise ConfigError(f"--concurrency measures our engine rows ({names}); " + "; ".join(wrong))
    return [r for r in engines if r.name in only]


def run_series(
    row: Any,
    levels: list[int],
    checkpoint: str,
    frames: int,
    repeats: int,
    reference: str,
    reference_text: str,
    threads: int | None,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Every level of ``row`` in one spawned process; its rows, or one ``error`` entry per level."""
    from harness.launchers.local import run_in_child

    knobs, asked = series_knobs(dict(row.options), levels)
    note = None
    if knobs["max_batch"] != asked:
        note = f"max_batch raised from {asked} to {knobs['max_batch']} (the largest concurrency)"
        log.info("row %s: %s", row.name, note)
    with tempfile.TemporaryDirectory() as tmp:
        job = {
            "knobs": knobs,
            "checkpoint": checkpoint,
            "reference_audio": reference,
            "reference_text": reference_text,
            "frames": frames,
            "repeats": repeats,
            "levels": levels,
            "threads": threads,
            "compile_cache": str(Path(tmp) / "compile-cache"),
        }
        outcome = run_in_child(measure_concurrency, job, timeout_s, Path(tmp) / "series.log")
    if outcome.result is None:
        return [{"row": row.name, "concurrency": c, "error": outcome.error} for c in levels]
    result = outcome.result
    rows = concurrency_rows(row.name, {c: v["rounds"] for c, v in result["levels"].items()})
    active = result["active_profile"]
    for r in rows:
        level = result["levels"][r["concurrency"]]
        r |= {
            "max_batch": active["max_batch"],
            "max_batch_asked": asked,
            "notes": [note] if note else [],
            "untimed_round_s": level["untimed_round_s"],
            "graphs_compiled_in_timed_rounds": level["graphs_in_timed"],
            "threads": result["threads"],
            "load_s": result["load_s"],
            "warmup_s": result["warmup_s"],
            "active_profile": active,
            "fallbacks": result["fallbacks"],
            "requests": [q for rnd in level["rounds"] for q in rnd["requests"]],
        }
    return rows


def run_concurrency_bench(
    checkpoint: str,
    levels: list[int],
    frames: int,
    repeats: int,
    out_dir: Path,
    reference: str | None = None,
    only: list[str] | None = None,
) -> Path:
    """Each selected engine row at every concurrency of ``levels``; print the table, write JSON +
    Markdown named after the device and model."""
    from engine.audio_io import SAMPLE_RATE, read_audio_file, write_wav
    from engine.machine import device_name
    from engine.model.checkpoint import CheckpointFolder
    from harness.bench.report import concurrency_markdown, run_meta
    from harness.bench.rows import CPU_ROWS, GPU_ROWS, REFERENCE_TEXT, reference_signal
    from harness.bench.run import ROW_TIMEOUT_S, hardware_preset
    from harness.reports import stamp, write_report

    levels = sorted(set(levels))
    folder = CheckpointFolder.open(checkpoint)
    device = device_name()
    preset = hardware_preset(device)
    threads = preset.get("threads") or (os.cpu_count() if device == "cpu" else None)
    selected = engine_rows(GPU_ROWS if device != "cpu" else CPU_ROWS, only)
    ref = read_audio_file(reference) if reference else reference_signal()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "reference.wav"
        write_wav(wav, ref, SAMPLE_RATE)
        for row in selected:
            log.info("bench row %s at concurrency %s ...", row.name, " ".join(map(str, levels)))
            series = run_series(
                row, levels, str(folder.path), frames, repeats, str(wav), REFERENCE_TEXT,
                threads, ROW_TIMEOUT_S * len(levels),
            )  # fmt: skip
            for r in series:
                if "error" in r:
                    log.error("row %s failed: %s", row.name, r["error"].strip().splitlines()[0])
            results.extend(series)
    meta = run_meta(folder, device, frames, repeats, threads, len(ref) / SAMPLE_RATE, None)
    meta["concurrency"] = levels
    markdown = concurrency_markdown(meta, results)
    print(markdown)
    stem = f"{meta['device_slug']}-{meta['size']}-concurrency-{stamp()}"
    return write_report(out_dir, stem, markdown, {"meta": meta, "rows": results})
