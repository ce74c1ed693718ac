"""What each step of a GPU check measures; a step returns its one-line summary or raises.

A step reads the plan and what earlier steps left in ``run.context`` (the checkpoint's folder),
and leaves its figures there for the report. ``SkipStep`` records a step that cannot apply here
(VRAM budgets on a CPU) as skipped, with its reason, instead of as failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.gpu_check.plan import VRAM_BUDGETS_GB, Plan

log = logging.getLogger("gpu-check")

SDPA_BACKENDS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_attention_math": "math",
}
PRECISIONS = ("bf16", "fp16", "fp32")
TTFA_ROW = "ours-int8"  # the profile the TTFA, warm-up and VRAM steps run (the likely winner)
# The dry run's rows: the GPU rows' knobs on a 256-position cache (one KV bucket) with the codec
# eager (the compile matrix covers the compiled codec), so the compiled steps run in minutes.
DRY_RUN_OPTIONS = {"max_seq_len": 256, "compile_codec": "none", "num_streams": 1}


class SkipStep(Exception):
    """This step cannot apply on this machine; the message says why."""


@dataclass
class StepResult:
    name: str
    status: str = "not run"  # ok, failed, skipped, not run
    seconds: float = 0.0
    summary: str = ""


@dataclass
class Run:
    plan: Plan
    part: int
    rows: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    steps: list[StepResult] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)


def bench_rows(plan: Plan, names: tuple[str, ...]) -> list:
    """``harness.bench.run`` rows by name, in the plan's sizes (see ``DRY_RUN_OPTIONS``)."""
    from harness.bench.rows import GPU_ROWS, Row

    rows = {row.name: row for row in GPU_ROWS}
    chosen = [rows[name] for name in names]
    if not plan.dry_run:
        return chosen
    return [
        Row(row.name, row.kind, row.options | DRY_RUN_OPTIONS, row.env)
        if row.kind == "engine"
        else row
        for row in chosen
    ]


def row_profile(plan: Plan, name: str = TTFA_ROW):
    """The ``EngineProfile`` of a bench row, in the plan's sizes."""
    from engine.profile import EngineProfile

    return EngineProfile(**bench_rows(plan, (name,))[0].options)


def step_environment(run: Run) -> str:
    import torch

    from engine.machine import device_name, driver_version
    from engine.preflight import check_cuda_usable, lowest_arch

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "c_compiler": shutil.which("cc") or shutil.which("gcc"),
        "cpp_compiler": shutil.which("c++") or shutil.which("g++"),
    }
    try:
        from importlib.metadata import version

        facts["triton"] = version("triton")
    except Exception:
        facts["triton"] = None
    if run.plan.dry_run:
        facts |= {"device": "cpu", "cpu_threads": torch.get_num_threads()}
    else:
        check_cuda_usable("cuda")
        props = torch.cuda.get_device_properties(0)
        facts |= {
            "device": device_name(),
            "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
            "wheel_lowest_arch": f"sm_{lowest_arch(torch.cuda.get_arch_list())}",
            "vram_mb": props.total_memory // 2**20,
            "multiprocessors": props.multi_processor_count,
            "driver": driver_version(),
        }
        if facts["c_compiler"] is None:
            raise RuntimeError("no C compiler (cc/gcc): Triton cannot build its launcher")
    run.context["device_name"] = facts["device"]
    run.context["environment"] = facts
    return ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None)


def step_checkpoint(run: Run) -> str:
    from engine.model.checkpoint import CheckpointError, CheckpointFolder
    from engine.model.synthetic import make_checkpoint

    try:
        folder = CheckpointFolder.open(run.plan.checkpoint)
        made = "found"
    except CheckpointError:
        folder = make_checkpoint(run.plan.preset, run.plan.checkpoint, seed=0)
        made = "made"
    run.context["checkpoint"] = str(folder.path)
    kind = "synthetic" if folder.is_synthetic else "real"
    return f"{made} {folder.path} ({kind} weights)"


def _sdpa_shapes(run: Run) -> dict[str, tuple[int, int, int, int, int]]:
    """(heads, KV heads, head dim, query rows, keys) of the checkpoint's three attention calls."""
    from fish_speech.models.text2semantic.llama import BaseModelArgs

    cfg = BaseModelArgs.from_pretrained(run.context["checkpoint"])
    kv = min(run.plan.kv_len, cfg.max_seq_len)
    return {
        f"slow decode (1 x {kv})": (cfg.n_head, cfg.n_local_heads, cfg.head_dim, 1, kv),
        f"fast decode (1 x {cfg.num_codebooks})": (
            cfg.fast_n_head,
            cfg.fast_n_local_heads,
            cfg.fast_head_dim,
            1,
            cfg.num_codebooks,
        ),
        "prefill (64 x 64, causal)": (cfg.n_head, cfg.n_local_heads, cfg.head_dim, 64, 64),
    }


def sdpa_choice(
    heads: int, kv_heads: int, dim: int, rows: int, keys: int, dtype: Any, device: str
) -> dict[str, Any]:
    """The SDPA kernel ``grouped_attention`` runs for one shape, from a dispatch trace, with the
    strides the kernel wrote and whether the result is already [B, T, H * D] contiguous."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.dual_ar import grouped_attention

    class Trace(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in SDPA_BACKENDS:
                first = out[0] if isinstance(out, tuple | list) else out
                self.calls.append((name, tuple(first.stride())))
            return out

    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, rows, dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, kv_heads, keys, dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(1, kv_heads, keys, dim, device=device, dtype=dtype, generator=gen)
    mask = torch.ones(rows, keys, dtype=torch.bool, device=device).tril(keys - rows)[None, None]
    with Trace() as trace:
        y = grouped_attention(q, k, v, mask)
    if not trace.calls:
        raise RuntimeError("no SDPA kernel seen in the dispatch trace")
    name, strides = trace.calls[-1]
    return {
        "backend": SDPA_BACKENDS[name],
        "op": f"aten.{name}",
        "kernel_out_strides": list(strides),
        "result_contiguous": y.is_contiguous(),
        "finite": bool(torch.isfinite(y.float()).all()),
    }


def step_sdpa(run: Run) -> str:
    import torch

    from engine.profile import DTYPES

    table, failures = [], []
    for precision in PRECISIONS:
        for shape, dims in _sdpa_shapes(run).items():
            row = {"precision": precision, "shape": shape}
            try:
                row |= sdpa_choice(*dims, DTYPES[precision], run.plan.device)
            except Exception as exc:  # no fused kernel for this dtype / shape: the finding itself
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                failures.append(f"{precision} {shape}")
            table.append(row)
    if run.plan.device == "cuda":
        torch.cuda.synchronize()
    run.context["sdpa"] = table
    if failures:
        raise RuntimeError("no fused SDPA kernel for " + ", ".join(failures))
    return "; ".join(sorted({f"{r['precision']}: {r['backend']}" for r in table}))


def step_fidelity(run: Run) -> str:
    """bf16 and int8 against fp32; int8 compiled, the only form CUDA runs it in."""
    from engine.profile import EngineProfile
    from harness.quality.fidelity_report import run_fidelity, write_fidelity

    profiles = {
        "bf16": EngineProfile(precision="bf16"),
        "bf16-int8": EngineProfile(precision="bf16", quantization="int8", compile_decode="default"),
    }
    meta, rows = run_fidelity(run.context["checkpoint"], profiles, run.plan.fidelity_frames)
    path = write_fidelity(meta, rows, run.plan.work_dir / "fidelity")
    run.context["fidelity"] = {"report": str(path), "rows": rows}
    verdicts = []
    for row in rows:
        if "error" in row:
            verdicts.append(f"{row['profile']} FAILED ({row['error']})")
        else:
            verdicts.append(f"{row['profile']} {'pass' if row['passes_gates'] else 'fail'}")
    if any("error" in row for row in rows):
        raise RuntimeError("; ".join(verdicts))
    return "; ".join(verdicts)


def step_bench(run: Run) -> str:
    import json

    from engine.audio_io import SAMPLE_RATE, write_wav
    from harness.bench.rows import reference_signal
    from harness.bench.run import run_bench

    plan = run.plan
    reference = plan.work_dir / "reference.wav"
    write_wav(reference, reference_signal(plan.reference_s), SAMPLE_RATE)
    reserve = 0.0 if plan.dry_run else 60.0  # keep time for the steps after it and the report
    markdown = run_bench(
        run.context["checkpoint"],
        plan.frames,
        plan.repeats,
        plan.work_dir / "bench",
        str(reference),
        fidelity_dir=plan.work_dir / "fidelity",
        rows=bench_rows(plan, run.rows),
        cold_compile=False,
        compile_cache=plan.compile_cache,
        deadline=time.monotonic() + max(run.left_s() - reserve, 30.0),
    )
    data = json.loads(markdown.with_suffix(".json").read_text())
    run.context["bench"] = {"report": str(markdown), **data}
    failed = [r["row"] for r in data["rows"] if "error" in r]
    ours = [r for r in data["rows"] if "error" not in r and r["row"].startswith("ours")]
    off_bucket = [r["row"] for r in ours if not plan.dry_run and r["kv_bucket"] != plan.kv_len]
    problems = [f"rows failed: {', '.join(failed)}"] * bool(failed) + [
        f"not in the {plan.kv_len} bucket: {', '.join(off_bucket)}"
    ] * bool(off_bucket)
    if problems:
        raise RuntimeError("; ".join(problems))
    return ", ".join(f"{r['row']} {r['frames_per_s']:.1f} frames/s" for r in data["rows"])


def _engine(plan: Plan, checkpoint: str, **kwargs: Any):
    """The TTFA row's engine, compiling into the plan's shared cache."""
    from engine.compile_cache import COMPILE_CACHE_ENV
    from engine.engine import OptimizedFishSpeech

    os.environ[COMPILE_CACHE_ENV] = str(plan.compile_cache)
    return OptimizedFishSpeech.from_checkpoint(checkpoint, row_profile(plan), **kwargs)


def step_ttfa(run: Run) -> str:
    """A voice saved once (its codes in the engine's on-disk reference cache), then time to
    first audio of streamed requests with it, and the device memory they held."""
    import torch

    from engine.telemetry import summarize
    from harness.bench.rows import REFERENCE_TEXT, TEXT, reference_signal

    plan = run.plan
    voices = plan.work_dir / "voices"
    t0 = time.perf_counter()
    engine = _engine(plan, run.context["checkpoint"], reference_cache_dir=voices)
    load_s = time.perf_counter() - t0
    held = (
        torch.cuda.memory_allocated(engine.device)
        if engine.device.type == "cuda"
        else engine.device_bytes()
    )
    voice = reference_signal(plan.reference_s)
    engine.reference_codes(voice)  # saved: encoded once, written under ``voices``
    if not any(voices.iterdir()):
        raise RuntimeError(f"the voice's codes were not saved under {voices}")

    def request(seed: int) -> dict[str, Any]:
        for _ in engine.synthesize_stream(
            TEXT, voice, REFERENCE_TEXT, fixed_frames=plan.frames, seed=seed
        ):
            pass
        return engine.last_report.as_dict()

    # Warm-up: the requests themselves, from the bench's compile cache; distinct seeds, so no
    # semantic-cache hits.
    t0 = time.perf_counter()
    warm = [request(seed) for seed in range(2 if engine.active_profile.compiled else 1)]
    warmup_s = time.perf_counter() - t0
    reports = [request(seed) for seed in range(100, 100 + plan.ttfa_requests)]
    if not all(r["reference_cache_hit"] for r in warm + reports):
        raise RuntimeError("the saved voice's codes were encoded again instead of read")
    ttfa = summarize([r["ttfa_s"] for r in reports])
    run.context["ttfa"] = {
        "profile": engine.active_profile.knobs(),
        "load_s": load_s,
        "resident_model_mb": engine.resident_bytes().total / 2**20,
        "allocated_after_load_mb": held / 2**20,
        "warmup_s": warmup_s,
        "first_request_ttfa_s": warm[0]["ttfa_s"],
        "ttfa_s": ttfa,
        "kv_bucket": reports[-1]["kv_bucket"],
        "prefix_cache_hits": sum(bool(r["prefix_cache_hit"]) for r in reports),
        "requests": warm + reports,
    } | _peaks(reports)
    return (
        f"{TTFA_ROW}: p50 {ttfa['p50'] * 1000:.0f} ms, max {ttfa['max'] * 1000:.0f} ms over "
        f"{len(reports)} requests"
    )


def _peaks(reports: list[dict[str, Any]]) -> dict[str, float | None]:
    """The largest of each memory figure over ``reports`` (None where nothing measured it)."""
    keys = ("peak_allocated_mb", "peak_reserved_mb", "nvml_process_mb", "host_rss_mb")
    return {k: max((r.get(k) or 0 for r in reports), default=0) or None for k in keys}


def step_warmup(run: Run) -> str:
    """``engine.warmup()`` as a service runs it at start-up: every KV bucket's compiled step and
    every codec decode length, timed, with the compile cache's hits and misses."""
    from engine.compile_cache import compile_counters

    t0 = time.perf_counter()
    engine = _engine(run.plan, run.context["checkpoint"])
    load_s = time.perf_counter() - t0
    seconds = engine.warmup()
    profile = engine.active_profile
    run.context["warmup"] = {
        "profile": profile.knobs(),
        "load_s": load_s,
        "warmup_s": seconds,
        "buckets": profile.buckets_to_warm(),
        "codec_lengths": list(engine.codec.lengths),
        "compile_cache": compile_counters(),
    }
    run.context["engine"] = engine  # the default request reuses it, warm
    return (
        f"{seconds:.1f} s over {len(profile.buckets_to_warm())} KV buckets and "
        f"{len(engine.codec.lengths)} codec lengths (load {load_s:.1f} s)"
    )


def step_default_request(run: Run) -> str:
    """One request as a user sends it: no fixed frame count, so generation ends at the model's
    end-of-speech (or the frame budget), through the path the benches never take."""
    from harness.bench.rows import TEXT

    engine = run.context.pop("engine", None) or _engine(run.plan, run.context["checkpoint"])
    chunks = list(engine.synthesize_stream(TEXT, seed=7))
    report = engine.last_report.as_dict()
    run.context["default_request"] = report
    return (
        f"{report['frames']} frames ({report['audio_s']:.1f} s of audio) in "
        f"{report['total_s']:.1f} s, {len(chunks)} chunks, first audio "
        f"{report['ttfa_s'] * 1000:.0f} ms"
    )


def _budget_request(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: cap the caching allocator, load, warm up, one default request."""
    import torch

    from engine.compile_cache import COMPILE_CACHE_ENV
    from engine.engine import OptimizedFishSpeech
    from harness.bench.rows import TEXT

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, job["budget_gb"] * 2**30 / total))
    os.environ[COMPILE_CACHE_ENV] = job["compile_cache"]
    engine = OptimizedFishSpeech.from_checkpoint(job["checkpoint"], job["profile"])
    engine.warmup()
    torch.cuda.reset_peak_memory_stats()
    list(engine.synthesize_stream(TEXT, seed=7))
    return engine.last_report.as_dict()


def step_vram_budgets(run: Run) -> str:
    """The TTFA row's profile with the process capped at what an 8 GB and a 12 GB card leave
    (``VRAM_BUDGETS_GB``): does start-up and a default request fit, and at what peak."""
    from harness.launchers.local import run_in_child

    if run.plan.dry_run:
        raise SkipStep("no device memory to cap on the CPU")
    results = {}
    for budget in VRAM_BUDGETS_GB:
        job = {
            "budget_gb": budget,
            "checkpoint": run.context["checkpoint"],
            "profile": row_profile(run.plan),
            "compile_cache": str(run.plan.compile_cache),
        }
        log_path = run.plan.work_dir / f"vram-{budget:.0f}gb.log"
        outcome = run_in_child(_budget_request, job, max(run.left_s(), 60.0), log_path)
        results[f"{budget:.0f} GB"] = outcome.result or {"error": outcome.error}
    run.context["vram_budgets"] = results
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        raise RuntimeError("did not fit: " + ", ".join(failed))
    return "; ".join(
        f"{name}: fits, peak reserved {r['peak_reserved_mb']:.0f} MB" for name, r in results.items()
    )


STEPS: dict[str, Callable[[Run], str]] = {
    "environment": step_environment,
    "checkpoint": step_checkpoint,
    "sdpa": step_sdpa,
    "fidelity": step_fidelity,
    "bench": step_bench,
    "ttfa": step_ttfa,
    "warmup": step_warmup,
    "default-request": step_default_request,
    "vram-budgets": step_vram_budgets,
}


def run_steps(run: Run, names: tuple[str, ...]) -> Run:
    """Every step in order; a failed one is recorded and the rest still run where they can.
    Every step after ``checkpoint`` needs it."""
    for name in names:
        result = StepResult(name)
        run.steps.append(result)
        needs = name not in ("environment", "checkpoint")
        if needs and not any(s.name == "checkpoint" and s.status == "ok" for s in run.steps):
            result.summary = "needs the checkpoint step"
            continue
        if run.left_s() <= 0:
            result.summary = f"over the {run.plan.budget_s:.0f} s budget"
            continue
        log.info("step %s ...", name)
        t0 = time.monotonic()
        try:
            result.summary = STEPS[name](run)
            result.status = "ok"
        except SkipStep as exc:
            result.status, result.summary = "skipped", str(exc)
        except Exception as exc:
            log.exception("step %s failed", name)
            result.status = "failed"
            result.summary = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            if name == "environment" and type(exc).__name__ == "PreflightError":
                raise
        result.seconds = time.monotonic() - t0
        log.info("step %s %s in %.1f s: %s", name, result.status, result.seconds, result.summary)
    run.context.pop("engine", None)
    return run


def check_part(plan: Plan, part: int) -> Run:
    """One part of the check (``plan.PARTS``)."""
    from harness.gpu_check.plan import PARTS

    _, names, rows, _ = PARTS[part]
    return run_steps(Run(plan, part, rows), names)
