"""Measure each bench row in its own spawned process, through the trial's measuring code.

A row is a trial job with a fixed repeat count: ``harness.trial.measure`` loads the baseline or
our engine and warms it up, one untimed request on the bench's inputs follows (its time, less a
steady request's, is the compile time), then ``repeats`` timed requests of a fixed text with a
fixed frame count and a saved voice (its codes and prompt K/V cached after the warm-up), summed
up by ``harness.trial.metrics``. A compiled row first compiles once in a process of its own
against an empty compile cache (cold), then the timed process starts from that cache (warm).
Speeds are ratios to the upstream eager row measured in the same run; bytes per frame come from
``engine.measure.perf_model`` against a bandwidth probe measured in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from engine.audio_io import SAMPLE_RATE, write_wav
from engine.machine import device_name
from engine.paths import CONF_DIR
from engine.profile import upstream_precision
from engine.telemetry import summarize
from harness.bench.report import fidelity_verdicts, run_meta, to_markdown, verdict
from harness.bench.rows import CPU_ROWS, GPU_ROWS, REFERENCE_TEXT, TEXT, Row, probe_bandwidth_gbs
from harness.launchers.local import run_in_child
from harness.reports import BENCH_DIR, FIDELITY_DIR, stamp, write_report
from harness.sweep.compose import detect_hardware_preset
from harness.sweep.config import HardwareConf, ScenarioConf
from harness.trial.record import BASELINE, CANDIDATE

log = logging.getLogger(__name__)

ROW_TIMEOUT_S = 1800


class CudagraphSkipReasons(logging.Handler):
    """Collects inductor's "skipping cudagraphs due to ..." messages (each bumps the
    ``cudagraph_skips`` counter), so a row that lost its CUDA graphs says why."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("skipping cudagraphs") and message not in self.reasons:
            self.reasons.append(message)

    @classmethod
    def attach(cls) -> CudagraphSkipReasons:
        from torch._inductor.cudagraph_utils import cudagraphs_log

        handler = cls()
        cudagraphs_log.addHandler(handler)
        return handler


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def row_job(row: Row, checkpoint: str, frames: int, repeats: int, reference: str) -> dict:
    """The trial job that measures ``row``: its knobs and the bench's fixed scenario."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scenario = ScenarioConf(
        text=TEXT,
        reference_audio=reference,
        reference_text=REFERENCE_TEXT,
        fixed_frames=frames,
        repeats=repeats,
        max_repeats=repeats,
    )
    if row.kind == "upstream":
        knobs = {"device": device, "precision": upstream_precision(device), **row.options}
    else:
        knobs = dict(row.options)
    return {
        "row": row,
        "kind": BASELINE if row.kind == "upstream" else CANDIDATE,
        "knobs": knobs,
        "checkpoint": checkpoint,
        "reference_audio": reference,
        "scenario": dataclasses.asdict(scenario),
    }


def measure_row(job: dict[str, Any]) -> dict[str, Any]:
    """In the row's child: load and warm up, one untimed request, then the timed repeats."""
    from engine.compile_cache import COMPILE_CACHE_ENV, compile_counters
    from harness.trial.measure import load_subject, measure_request
    from harness.trial.metrics import roofline, summarize_runs

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    os.environ[COMPILE_CACHE_ENV] = job["compile_cache"]
    skips = CudagraphSkipReasons.attach()
    subject = load_subject(job)
    t0 = time.perf_counter()
    first, _ = measure_request(subject)
    warmup_s = subject.compile_s + time.perf_counter() - t0
    counters = compile_counters()
    if job["compile_only"]:
        return {"warmup_s": warmup_s, "compile_counters": counters}
    if torch.cuda.is_available() and job["row"].compiled and _cudagraph_skips():
        raise RuntimeError(
            f"inductor skipped CUDA graphs {_cudagraph_skips()} times: "
            + ("; ".join(skips.reasons) or "no reason logged")
        )
    runs = [measure_request(subject)[0] for _ in range(job["scenario"]["repeats"])]
    metrics = summarize_runs(runs)
    fps = summarize([r["frames_per_s"] for r in runs])
    parts = subject.frame_bytes()
    return (
        metrics
        | roofline(metrics["frames_per_s"], parts["total"], None)
        | {
            "row": job["row"].name,
            "threads": torch.get_num_threads(),
            "load_s": subject.load_s,
            "warmup_s": warmup_s,
            "compile_counters": counters,
            "cudagraph_skips": _cudagraph_skips(),
            "cudagraph_skip_reasons": skips.reasons,
            "frames_per_s_spread": (fps["max"] - fps["min"]) / fps["p50"],
            "ms_per_frame": 1000.0 / fps["p50"],
            "ttfa_first_request_s": first["ttfa_s"],
            "prefix_cache_hit": all(r.get("prefix_cache_hit") for r in runs),
            "kv_bucket": runs[-1].get("kv_bucket"),
            "bytes_per_frame": parts,
            "active_profile": subject.active_knobs if job["row"].kind == "engine" else None,
            "fallbacks": subject.fallbacks,
            "timings_s": [r["total_s"] for r in runs],
        }
    )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block: a spawned child inherits them at start, before
    it imports torch (some torch settings are read once, from the environment)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_row(
    row: Row,
    checkpoint: str,
    frames: int,
    repeats: int,
    reference: np.ndarray,
    threads: int | None = None,
    cold_compile: bool = True,
    compile_cache: Path | None = None,
    timeout_s: float = ROW_TIMEOUT_S,
) -> dict[str, Any]:
    """Measure one row in spawned processes (a cold compile first for compiled rows, unless
    ``cold_compile`` is off: then the timed process compiles, from ``compile_cache`` if given);
    a crash or timeout becomes an ``error`` entry."""
    cold_s = None
    with tempfile.TemporaryDirectory() as tmp, _environment(row.env):
        wav = Path(tmp) / "reference.wav"
        write_wav(wav, reference, SAMPLE_RATE)
        job = row_job(row, checkpoint, frames, repeats, str(wav)) | {
            "threads": threads,
            "compile_cache": str(compile_cache or Path(tmp) / "compile-cache"),
        }
        if row.compiled and cold_compile:
            cold = run_in_child(
                measure_row, job | {"compile_only": True}, timeout_s, Path(tmp) / "cold.log"
            )
            if cold.result is None:
                return {"row": row.name, "error": cold.error}
            cold_s = cold.result["warmup_s"]
        outcome = run_in_child(
            measure_row, job | {"compile_only": False}, timeout_s, Path(tmp) / "row.log"
        )
    if outcome.result is None:
        return {"row": row.name, "error": outcome.error}
    result = outcome.result | {"cold_warmup_s": cold_s, "compiled": row.compiled}
    # The warm-up is compile + one request; a steady-state request estimates the latter.
    work = result["latency_p50_s"]
    result["compile_s"] = max(0.0, result["warmup_s"] - work)
    result["cold_compile_s"] = None if cold_s is None else max(0.0, cold_s - work)
    return result


def hardware_preset(device: str) -> dict[str, Any]:
    """The ``conf/hardware`` preset that matches this device."""
    name = "cpu" if device == "cpu" else detect_hardware_preset(device)
    preset = OmegaConf.load(CONF_DIR / "hardware" / f"{name}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(HardwareConf), preset))


def run_bench(
    checkpoint: str,
    frames: int = 512,
    repeats: int = 5,
    out_dir: Path = BENCH_DIR,
    reference: str | None = None,
    only: list[str] | None = None,
    fidelity_dir: Path = FIDELITY_DIR,
    rows: list[Row] | None = None,
    cold_compile: bool = True,
    compile_cache: Path | None = None,
    deadline: float | None = None,
) -> Path:
    """Run every row (``rows``, else this device's), print the table, write JSON + Markdown named
    after the device and model. A row is not started after ``deadline`` (``time.monotonic()``)
    nor allowed to run past it. ``cold_compile`` and ``compile_cache`` are ``run_row``'s."""
    from engine.audio_io import read_audio_file
    from engine.model.checkpoint import CheckpointFolder
    from harness.bench.rows import reference_signal

    folder = CheckpointFolder.open(checkpoint)
    device = device_name()
    preset = hardware_preset(device)
    threads = preset.get("threads") or (os.cpu_count() if device == "cpu" else None)
    rows = [
        r for r in rows or (GPU_ROWS if device != "cpu" else CPU_ROWS) if not only or r.name in only
    ]
    ref = read_audio_file(reference) if reference else reference_signal()
    probe = probe_bandwidth_gbs("cuda" if device != "cpu" else "cpu")
    log.info("memory-bandwidth probe: %.1f GB/s", probe)
    results = []
    for row in rows:
        left = ROW_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            results.append({"row": row.name, "error": "not run: over the time budget"})
            continue
        log.info("bench row %s ...", row.name)
        result = run_row(
            row, str(folder.path), frames, repeats, ref, threads, cold_compile, compile_cache,
            min(left, ROW_TIMEOUT_S),
        )  # fmt: skip
        if "error" in result:
            log.error("row %s failed: %s", row.name, result["error"].strip().splitlines()[0])
        results.append(result)
    verdicts = fidelity_verdicts(fidelity_dir, device, str(folder.path))
    baseline = next((r for r in results if r["row"] == "upstream-eager" and "error" not in r), None)
    for r in results:
        if "error" not in r:
            r["speedup"] = r["frames_per_s"] / baseline["frames_per_s"] if baseline else None
            r["probe_fraction"] = r["achieved_gb_s"] / probe
            r["fidelity"] = verdict(r, device, verdicts)
    meta = run_meta(folder, device, frames, repeats, threads, len(ref) / SAMPLE_RATE, probe)
    meta |= {"bandwidth_ceiling_gbs": preset.get("bandwidth_gb_s")}
    meta["fidelity_report"] = next(iter(verdicts.values()), {}).get("report")
    markdown = to_markdown(meta, results)
    print(markdown)
    stem = f"{meta['device_slug']}-{meta['size']}-{stamp()}"
    return write_report(out_dir, stem, markdown, {"meta": meta, "rows": results})
