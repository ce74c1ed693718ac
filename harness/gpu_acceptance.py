"""``python -m harness.gpu_acceptance``: what a lent GPU must show, in one call, into one report.

Steps, in order (each recorded as ok / failed / not run, none stops the others):

1. environment: the GPU, its compute capability against the torch wheel's architectures, driver,
   torch / CUDA / Triton versions, and the C compiler Triton builds its launcher with;
2. checkpoint: the synthetic checkpoint (s1-mini, or tiny in the dry run), made if missing;
3. sdpa: which SDPA kernel ``engine.dual_ar.grouped_attention`` gets per precision (bf16, fp16,
   fp32) for the slow decode, fast decode and prefill shapes, read from a dispatch trace, and the
   layout it writes;
4. fidelity: bf16 and bf16 int8 against fp32 (``harness.quality.fidelity_report``), whose verdicts
   the bench table then shows;
5. bench: upstream eager and ``--compile`` against our bf16 / int8 / int4 reduce-overhead rows
   (``harness.bench``) with a reference long enough that decoding runs in the 2,048-position KV
   bucket; CUDA-graph skips and their reasons per row; VRAM peaks per row;
6. ttfa: a voice saved in the service's voice library (``serving.services.voices``), then time to
   first audio of streamed requests with it, and the VRAM they held.

``--dry-run`` runs every step on the CPU with the tiny checkpoint and tiny sizes (eager rows: CPU
cannot capture CUDA graphs and compiling would take minutes), writing the same files; CI runs it.
The real run refuses to start without a usable GPU (exit 2). Exit 1 when a step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu-acceptance")

# Third-party modules the steps import (a dry run's sys.modules), as import names. The lent GPU
# machines have torch, torchaudio, numpy, yaml, tiktoken, psutil and pynvml; the rest travel as
# wheels (README: "GPU results"). The first line of output names any that are missing.
REQUIRED_MODULES = (
    "torch",
    "torchaudio",
    "numpy",
    "yaml",
    "tiktoken",
    "psutil",
    "pynvml",
    "fish_speech",
    "dac",
    "audiotools",
    "hydra",
    "omegaconf",
    "pydantic",
    "soundfile",
    "librosa",
    "julius",
    "loguru",
    "argbind",
    "flatten_dict",
    "randomname",
    "loralib",
    "fastapi",
    "starlette",
    "multipart",
)
# Distributions the lent GPU machines already hold (/work/.library/device/KINDS.md, 2026-11):
# --wheel-list leaves them out of the wheels to carry.
_LENT_GPU_HAS = (
    "torch torchaudio triton numpy scipy sympy mpmath pyyaml tiktoken regex psutil nvidia-ml-py "
    "packaging filelock fsspec jinja2 markupsafe pillow protobuf tqdm typing-extensions rich "
    "markdown-it-py mdurl pygments einops transformers tokenizers huggingface-hub safetensors "
    "tensorboard tensorboard-data-server absl-py grpcio markdown werkzeug setuptools six "
    "requests urllib3 idna certifi charset-normalizer httpx httpcore h11 anyio attrs click "
    "lazy-loader numba llvmlite scikit-learn joblib threadpoolctl matplotlib cycler kiwisolver "
    "fonttools contourpy pyparsing python-dateutil hf-xet annotated-doc"
)
LENT_GPU_HAS = frozenset(_LENT_GPU_HAS.split())
STEP_MODULES = (
    "engine.engine",
    "engine.synthetic",
    "harness.bench",
    "harness.quality.fidelity_report",
    "serving.services.voices",
)
EXIT_FAILED, EXIT_REFUSED, EXIT_MISSING = 1, 2, 3
BENCH_ROWS = ("upstream-eager", "upstream-compile", "ours-bf16-compiled", "ours-int8", "ours-int4")
TTFA_PROFILE_ROW = "ours-int8"
PRECISIONS = ("bf16", "fp16", "fp32")
SDPA_BACKENDS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_attention_math": "math",
}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Plan:
    """Sizes of one acceptance run; ``for_run`` holds the two sets (GPU and dry run)."""

    dry_run: bool
    out_dir: Path
    checkpoint: Path
    preset: str
    budget_s: float
    frames: int
    repeats: int
    reference_s: float
    fidelity_frames: int
    kv_len: int
    ttfa_requests: int
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu-accept-")))

    @classmethod
    def for_run(
        cls, dry_run: bool, out_dir: Path, checkpoint: Path | None, budget_s: float | None
    ) -> Plan:
        if dry_run:
            work = Path(tempfile.mkdtemp(prefix="gpu-accept-dry-"))
            return cls(
                dry_run=True,
                out_dir=out_dir,
                checkpoint=checkpoint or work / "tiny-synthetic",
                preset="tiny",
                budget_s=budget_s or 300.0,
                frames=2,
                repeats=1,
                reference_s=1.0,
                fidelity_frames=2,
                kv_len=256,
                ttfa_requests=2,
                work_dir=work,
            )
        # GPU sizes: a 45 s voice is 969 codec frames; with the texts the prompt is ~1,000 tokens,
        # so 128 fixed frames (or even the 1,024-frame budget) decode in the 2,048 bucket
        # (1,025-2,048 positions).
        return cls(
            dry_run=False,
            out_dir=out_dir,
            checkpoint=checkpoint or Path("checkpoints/s1-mini-synthetic"),
            preset="s1-mini",
            budget_s=budget_s or 450.0,
            frames=128,
            repeats=3,
            reference_s=45.0,
            fidelity_frames=64,
            kv_len=2048,
            ttfa_requests=4,
        )

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def compile_cache(self) -> Path:
        """One compile cache for every bench row and the TTFA engine, which then starts warm."""
        return self.work_dir / "compile-cache"


@dataclass
class StepResult:
    name: str
    status: str = "not run"  # ok, failed, not run
    seconds: float = 0.0
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    plan: Plan
    started: float = field(default_factory=time.monotonic)
    steps: list[StepResult] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` this interpreter cannot import (looked up, not imported)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def wheel_list() -> list[str]:
    """``name==version`` of every distribution the steps import that a lent GPU machine lacks:
    what to ``pip download`` here and carry there (README: "GPU results")."""
    import importlib
    from importlib import metadata

    for module in STEP_MODULES:
        importlib.import_module(module)
    owners = metadata.packages_distributions()
    names = {
        dist
        for top in {name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
        for dist in owners.get(top, [])
    }
    wanted = {
        metadata.metadata(name)["Name"]: metadata.version(name)
        for name in names
        if re.sub(r"[-_.]+", "-", name.lower()) not in LENT_GPU_HAS
        and not name.lower().startswith(("nvidia-", "cuda-"))
    }
    return sorted(f"{name}=={version}" for name, version in wanted.items())


def slug(name: str) -> str:
    """A device name as a file-name part: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def bench_rows(dry_run: bool) -> list:
    """The GPU bench's rows named in BENCH_ROWS. The dry run keeps upstream eager and the TTFA
    profile's row, made eager (CPU captures no CUDA graphs and compiling takes minutes there):
    the other rows run the same code with other knobs, and each row costs a model load."""
    from harness.bench import GPU_ROWS, Row

    rows = [row for row in GPU_ROWS if row.name in BENCH_ROWS]
    if not dry_run:
        return rows
    eager = {"compile_decode": "none", "compile_codec": "none", "compile_prefill": False}
    return [
        Row(row.name, row.kind, row.options | eager | {"num_streams": 1})
        if row.kind == "engine"
        else row
        for row in rows
        if row.name in ("upstream-eager", TTFA_PROFILE_ROW)
    ]


# --- steps -------------------------------------------------------------------------------------


def step_environment(run: Run) -> str:
    import torch

    from engine.preflight import _driver_version, check_cuda_usable, lowest_arch

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "c_compiler": shutil.which("cc") or shutil.which("gcc"),
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
            "device": torch.cuda.get_device_name(0),
            "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
            "wheel_lowest_arch": f"sm_{lowest_arch(torch.cuda.get_arch_list())}",
            "vram_mb": props.total_memory // 2**20,
            "multiprocessors": props.multi_processor_count,
            "driver": _driver_version(),
        }
        if facts["c_compiler"] is None:
            raise RuntimeError("no C compiler (cc/gcc): Triton cannot build its launcher")
    run.context["device_name"] = facts["device"]
    run.context["environment"] = facts
    return ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None)


def step_checkpoint(run: Run) -> str:
    from engine.checkpoint import CheckpointError, CheckpointFolder
    from engine.synthetic import make_checkpoint

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
    chosen = sorted({f"{r['precision']}: {r['backend']}" for r in table})
    return "; ".join(chosen)


def step_fidelity(run: Run) -> str:
    from engine.profile import EngineProfile
    from harness.quality.fidelity_report import run_fidelity, write_report

    profiles = {
        "bf16": EngineProfile(precision="bf16"),
        "bf16-int8": EngineProfile(precision="bf16", quantization="int8"),
    }
    meta, rows = run_fidelity(run.context["checkpoint"], profiles, run.plan.fidelity_frames)
    path = write_report(meta, rows, run.plan.work_dir / "fidelity")
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
    from engine.audio_io import SAMPLE_RATE, write_wav
    from harness.bench import reference_signal, run_bench

    plan = run.plan
    reference = plan.work_dir / "reference.wav"
    write_wav(reference, reference_signal(plan.reference_s), SAMPLE_RATE)
    reserve = 0.0 if plan.dry_run else 60.0  # keep time for the TTFA step and the report
    rows = bench_rows(plan.dry_run)
    markdown = run_bench(
        run.context["checkpoint"],
        plan.frames,
        plan.repeats,
        plan.work_dir / "bench",
        str(reference),
        fidelity_dir=plan.work_dir / "fidelity",
        rows=rows,
        cold_compile=False,
        compile_cache=plan.compile_cache,
        deadline=time.monotonic() + max(run.left_s() - reserve, 30.0),
        isolate=not plan.dry_run,
    )
    data = json.loads(markdown.with_suffix(".json").read_text())
    run.context["bench"] = {"report": str(markdown), **data}
    failed = [r["row"] for r in data["rows"] if "error" in r]
    ours = [r for r in data["rows"] if "error" not in r and r["row"].startswith("ours")]
    off_bucket = [r["row"] for r in ours if not plan.dry_run and r["kv_bucket"] != plan.kv_len]
    if failed or off_bucket:
        raise RuntimeError(
            "; ".join(
                [f"rows failed: {', '.join(failed)}"] * bool(failed)
                + [f"not in the {plan.kv_len} bucket: {', '.join(off_bucket)}"] * bool(off_bucket)
            )
        )
    return ", ".join(
        f"{r['row']} {r['frames_per_s']:.1f} frames/s" for r in data["rows"] if "error" not in r
    )


def step_ttfa(run: Run) -> str:
    import numpy as np
    import torch

    from engine.audio_io import load_reference
    from engine.caches import ReferenceCodeCache
    from engine.compile_cache import COMPILE_CACHE_ENV
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile
    from harness.bench import REFERENCE_TEXT, TEXT, reference_signal
    from serving.services.voices import VoiceLibrary

    plan = run.plan
    row = next(r for r in bench_rows(plan.dry_run) if r.name == TTFA_PROFILE_ROW)
    os.environ[COMPILE_CACHE_ENV] = str(plan.compile_cache)
    t0 = time.perf_counter()
    engine = OptimizedFishSpeech.from_checkpoint(
        run.context["checkpoint"], EngineProfile(**row.options)
    )
    load_s = time.perf_counter() - t0
    # The bytes model against what the device holds after load (CPU dry run: the counted tensors).
    modelled = engine.resident_bytes().total
    held = (
        torch.cuda.memory_allocated(engine.device)
        if engine.device.type == "cuda"
        else engine.device_bytes()
    )
    audio = reference_signal(plan.reference_s)
    library = VoiceLibrary(plan.work_dir / "voices")
    library.create(
        "acceptance",
        None,
        REFERENCE_TEXT,
        "user",
        audio,
        engine.codec.encode(load_reference(audio)),
    )
    voice = library.get("acceptance")
    # As the service does for a saved voice: its stored codes go into the engine's cache.
    key = ReferenceCodeCache.key_for(np.ascontiguousarray(voice.audio).tobytes())
    engine.reference_cache.put(key, voice.codes.to(engine.device))

    def request(seed: int) -> dict[str, Any]:
        for _ in engine.synthesize_stream(
            TEXT, voice.audio, voice.info.transcript, fixed_frames=plan.frames, seed=seed
        ):
            pass
        return engine.last_report.as_dict()

    # Warm-up: the requests themselves. They have the bench's text, voice length and frames, so
    # their graphs come from the bench's compile cache (engine.warmup() would also build every
    # other KV bucket up to max_seq_len). Distinct seeds: no semantic-cache hits.
    t0 = time.perf_counter()
    warm = [request(seed) for seed in range(2 if engine.active_profile.compiled else 1)]
    warmup_s = time.perf_counter() - t0
    reports = [request(seed) for seed in range(100, 100 + plan.ttfa_requests)]
    if not all(r["reference_cache_hit"] for r in warm + reports):
        raise RuntimeError("the saved voice's codes were re-encoded instead of read from the cache")
    ttfa = sorted(r["ttfa_s"] * 1000 for r in reports)
    figures = {
        "profile": engine.active_profile.knobs(),
        "load_s": load_s,
        "resident_model_mb": modelled / 2**20,
        "allocated_after_load_mb": held / 2**20,
        "warmup_s": warmup_s,
        "first_request_ttfa_ms": warm[0]["ttfa_s"] * 1000,
        "saved_voice_ttfa_p50_ms": ttfa[len(ttfa) // 2],
        "saved_voice_ttfa_max_ms": ttfa[-1],
        "kv_bucket": reports[-1]["kv_bucket"],
        "timed_requests": len(reports),
        "prefix_cache_hits": sum(bool(r["prefix_cache_hit"]) for r in reports),
        "peak_allocated_mb": max((r["peak_allocated_mb"] or 0) for r in reports) or None,
        "peak_reserved_mb": max((r["peak_reserved_mb"] or 0) for r in reports) or None,
        "nvml_process_mb": max((r["nvml_process_mb"] or 0) for r in reports) or None,
        "host_rss_mb": max(r["host_rss_mb"] for r in reports),
        "requests": warm + reports,
    }
    run.context["ttfa"] = figures
    return (
        f"{TTFA_PROFILE_ROW}: p50 {figures['saved_voice_ttfa_p50_ms']:.0f} ms, max "
        f"{figures['saved_voice_ttfa_max_ms']:.0f} ms over {len(reports)} requests"
    )


STEPS: list[tuple[str, Callable[[Run], str]]] = [
    ("environment", step_environment),
    ("checkpoint", step_checkpoint),
    ("sdpa", step_sdpa),
    ("fidelity", step_fidelity),
    ("bench", step_bench),
    ("ttfa", step_ttfa),
]
NEEDS = {
    "sdpa": "checkpoint",
    "fidelity": "checkpoint",
    "bench": "checkpoint",
    "ttfa": "checkpoint",
}


def run_steps(plan: Plan) -> Run:
    """Every step in order; a failed one is recorded and the rest still run where they can."""
    run = Run(plan)
    for name, fn in STEPS:
        result = StepResult(name)
        run.steps.append(result)
        needed = NEEDS.get(name)
        if needed and not any(s.name == needed and s.status == "ok" for s in run.steps):
            result.summary = f"needs the {needed} step"
            continue
        if run.left_s() <= 0:
            result.summary = f"over the {plan.budget_s:.0f} s budget"
            continue
        log.info("step %s ...", name)
        t0 = time.monotonic()
        try:
            result.summary = fn(run)
            result.status = "ok"
        except Exception as exc:
            log.exception("step %s failed", name)
            result.status = "failed"
            result.summary = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            if name == "environment" and type(exc).__name__ == "PreflightError":
                raise
        result.seconds = time.monotonic() - t0
        log.info("step %s %s in %.1f s: %s", name, result.status, result.seconds, result.summary)
    return run


# --- report ------------------------------------------------------------------------------------


def _mb(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def to_markdown(run: Run) -> str:
    plan, ctx = run.plan, run.context
    env = ctx.get("environment", {})
    total = time.monotonic() - run.started
    mode = (
        "DRY RUN on the CPU (tiny checkpoint, eager rows): proves the wiring, not the GPU"
        if (plan.dry_run)
        else "GPU run"
    )
    lines = [
        f"# GPU acceptance: {ctx.get('device_name', 'unknown device')}",
        "",
        f"{mode}. {time.strftime('%Y-%m-%d %H:%M:%S')}; {total:.0f} s of a {plan.budget_s:.0f} s "
        "budget. Environment: " + ", ".join(f"{k} `{v}`" for k, v in env.items()) + ".",
        "",
        "| step | status | seconds | summary |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.summary.replace('|', '/')} |"
        for s in run.steps
    ]
    if ctx.get("sdpa"):
        lines += [
            "",
            "## SDPA kernel per precision (dispatch trace of `grouped_attention`)",
            "",
            "| precision | call | backend | kernel output strides | result contiguous |",
            "|---|---|---|---|---|",
        ]
        for r in ctx["sdpa"]:
            if "error" in r:
                lines.append(f"| {r['precision']} | {r['shape']} | FAILED: {r['error']} | | |")
                continue
            lines.append(
                f"| {r['precision']} | {r['shape']} | {r['backend']} (`{r['op']}`) "
                f"| {tuple(r['kernel_out_strides'])} | {r['result_contiguous']} |"
            )
    if ctx.get("fidelity"):
        lines += ["", "## Fidelity against fp32", "", f"Report: `{ctx['fidelity']['report']}`", ""]
        for r in ctx["fidelity"]["rows"]:
            if "error" in r:
                lines.append(f"- {r['profile']}: FAILED {r['error']}")
            else:
                gates = "pass" if r["passes_gates"] else "FAIL " + "; ".join(r["gate_failures"])
                lines.append(
                    f"- {r['profile']} ({r['runs_as']}): slow KL {r['slow_kl']:.2e}, top-1 "
                    f"{r['slow_top1']:.3f}; fast KL {r['fast_kl']:.2e}, top-1 "
                    f"{r['fast_top1']:.3f}; codec SNR {r['codec_snr_db']:.1f} dB: {gates}"
                )
    if ctx.get("bench"):
        bench = ctx["bench"]
        lines += [
            "",
            f"## Bench ({bench['meta']['frames']} frames, {bench['meta']['repeats']} repeats, "
            f"{bench['meta']['reference_s']:.0f} s saved voice)",
            "",
            f"Full table: `{bench['report']}`. Probe {bench['meta']['probe_gbs']:.0f} GB/s.",
            "",
            "| row | frames/s | speed-up | KV bucket | TTFA ms | peak alloc / reserved MB "
            "| compile s | CUDA-graph skips |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in bench["rows"]:
            if "error" in r:
                lines.append(
                    f"| {r['row']} | FAILED: {' '.join(r['error'].split())[:300]} |" + " |" * 6
                )
                continue
            skips = r.get("cudagraph_skips", 0)
            reasons = "; ".join(r.get("cudagraph_skip_reasons") or [])
            speedup = "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
            lines.append(
                f"| {r['row']} | {r['frames_per_s']:.1f} | {speedup} "
                f"| {r.get('kv_bucket') or 'static'} "
                f"| {r['ttfa_p50_s'] * 1000:.0f} | {_mb(r['peak_allocated_mb'])} / "
                f"{_mb(r['peak_reserved_mb'])} | {r['compile_s']:.1f} | "
                f"{skips}{f' ({reasons})' if reasons else ''} |"
            )
    if ctx.get("ttfa"):
        t = ctx["ttfa"]
        lines += [
            "",
            "## Time to first audio with a saved voice",
            "",
            f"Profile `{TTFA_PROFILE_ROW}`, the bench's text and frames with a "
            f"{plan.reference_s:.0f} s voice saved in the voice library, its stored codes in the "
            f"engine's cache; KV bucket {t['kv_bucket']}. Load {t['load_s']:.1f} s; "
            f"warm-up requests (compile from the bench's cache, graph capture) "
            f"{t['warmup_s']:.1f} s, the first one's TTFA {t['first_request_ttfa_ms']:.0f} ms. "
            f"Then {t['timed_requests']} requests ({t['prefix_cache_hits']} with the voice's "
            f"prompt K/V cached): TTFA p50 **{t['saved_voice_ttfa_p50_ms']:.0f} ms**, max "
            f"{t['saved_voice_ttfa_max_ms']:.0f} ms. "
            f"Resident after load: bytes model {t['resident_model_mb']:.0f} MB, allocated "
            f"{t['allocated_after_load_mb']:.0f} MB. "
            f"VRAM: peak allocated {_mb(t['peak_allocated_mb'])} MB, reserved "
            f"{_mb(t['peak_reserved_mb'])} MB, NVML process {_mb(t['nvml_process_mb'])} MB; host "
            f"RSS {t['host_rss_mb']:.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


def write_reports(run: Run) -> Path:
    """``<device>-acceptance.md`` and ``.json`` (plus the bench and fidelity reports it links,
    copied beside it) under the plan's out_dir."""
    out = run.plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{slug(run.context.get('device_name', 'unknown'))}-acceptance"
    for key in ("bench", "fidelity"):
        if run.context.get(key):
            source = Path(run.context[key]["report"])
            for suffix in (".md", ".json"):
                target = out / f"{stem.name}-{key}{suffix}"
                shutil.copyfile(source.with_suffix(suffix), target)
            run.context[key]["report"] = f"{stem.name}-{key}.md"
    data = {
        "plan": {k: str(v) for k, v in dataclasses.asdict(run.plan).items()},
        "steps": [dataclasses.asdict(s) for s in run.steps],
        "context": run.context,
    }
    Path(f"{stem}.json").write_text(json.dumps(data, indent=2, default=str))
    Path(f"{stem}.md").write_text(to_markdown(run))
    return Path(f"{stem}.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu-acceptance", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU, tiny sizes")
    parser.add_argument("--out-dir", type=Path, default=Path("reports/bench"))
    parser.add_argument("--checkpoint", type=Path, help="default: the s1-mini / tiny synthetic one")
    parser.add_argument("--budget-s", type=float, help="seconds for all steps (default 450 on GPU)")
    parser.add_argument(
        "--wheel-list", action="store_true", help="print the wheels a lent GPU machine lacks"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wheel_list:
        print(" ".join(wheel_list()))
        return 0
    missing = missing_modules(REQUIRED_MODULES)
    if missing:
        print(
            f"gpu-acceptance: missing Python packages for {', '.join(missing)}: run it from the "
            "project environment (make setup) or carry their wheels (README: GPU results)",
            file=sys.stderr,
        )
        return EXIT_MISSING
    plan = Plan.for_run(args.dry_run, args.out_dir, args.checkpoint, args.budget_s)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    file_log = logging.FileHandler(plan.work_dir / "acceptance.log")
    file_log.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(file_log)
    from engine.preflight import PreflightError

    try:
        run = run_steps(plan)
        report = write_reports(run)
        shutil.copyfile(plan.work_dir / "acceptance.log", report.with_suffix(".log"))
    except PreflightError as exc:
        print(f"gpu-acceptance: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    print(report.read_text())
    print(f"wrote {report}")
    return EXIT_FAILED if any(s.status != "ok" for s in run.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
