"""``fishbench bench``: upstream against our profiles on one checkpoint, with the roofline.

Every row runs in its own spawned process (caches, allocator and compile state never leak
between rows), warms up untimed (reported as compile time), then times ``repeats`` runs of a
fixed text with a fixed number of frames and a saved voice (a 10 s reference whose codes and
prompt K/V are cached after the warm-up). A compiled row first compiles once in a process of its
own against an empty compile cache (cold), then the timed process starts from that cache (warm):
the compile column shows both. Speeds are ratios to the upstream eager row measured in the same
run; bytes per frame come from ``engine.perf_model`` and are set against a memory-bandwidth probe
measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from engine.audio_io import SAMPLE_RATE
from engine.paths import CONF_DIR
from engine.telemetry import figure
from harness.launcher import run_in_child
from harness.sweep.compose import detect_hardware_preset
from harness.sweep.config import HardwareConf

log = logging.getLogger(__name__)

TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."
)
REFERENCE_TEXT = "This is the reference recording of the speaker."
ROW_TIMEOUT_S = 1800
PROBE_BYTES = 2**30


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "upstream" or "engine"
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # set in the row's processes only

    @property
    def compiled(self) -> bool:
        if self.kind == "upstream":
            return bool(self.options.get("compile"))
        return any(
            self.options.get(k, "none") != "none" for k in ("compile_decode", "compile_codec")
        ) or bool(self.options.get("compile_prefill"))


_GPU_COMPILED = {
    "compile_decode": "reduce-overhead",
    "compile_codec": "default",
    "compile_prefill": True,
    "num_streams": 2,
}
GPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("upstream-compile", "upstream", {"compile": True}),
    Row("ours-bf16-compiled", "engine", {"precision": "bf16", **_GPU_COMPILED}),
    Row("ours-int8", "engine", {"precision": "bf16", "quantization": "int8", **_GPU_COMPILED}),
    Row("ours-int4", "engine", {"precision": "bf16", "quantization": "int4", **_GPU_COMPILED}),
    # What an RTX 30/40 card runs: cuDNN attention is chosen only on sm90+, so sm86/89 get the
    # memory-efficient kernel. Deprioritising cuDNN shows that path on an H100/H200.
    Row(
        "ours-bf16-mem-efficient",
        "engine",
        {"precision": "bf16", **_GPU_COMPILED},
        {"TORCH_CUDNN_SDPA_DEPRIORITIZED": "1"},
    ),
    Row(
        "ours-nf4 (experimental)",
        "engine",
        {"precision": "bf16", "quantization": "nf4", **_GPU_COMPILED, "fullgraph": False},
    ),
]
_CPU_COMPILED = {"compile_decode": "default"}
CPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("ours-fp32", "engine", {"precision": "fp32"}),
    Row("ours-bf16-compiled", "engine", {"precision": "bf16", **_CPU_COMPILED}),
    Row(
        "ours-int8-compiled",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED},
    ),
    Row(
        "ours-int4-compiled",
        "engine",
        {"precision": "bf16", "quantization": "int4", **_CPU_COMPILED},
    ),
]


def reference_signal(seconds: float = 10.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic 10 s speech-like signal; with random weights only its length matters."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
    noise = np.random.default_rng(0).normal(0, 0.02, t.shape)
    return (0.2 * envelope * voice + noise).astype(np.float32)


def probe_bandwidth_gbs(device: str, nbytes: int = PROBE_BYTES, repeats: int = 5) -> float:
    """Best-of-``repeats`` read bandwidth of summing a ``nbytes`` tensor: the practical ceiling."""
    dev = torch.device(device)
    data = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    data.sum()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        data.sum()
        sync()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def _runner(row: Row, checkpoint: str):
    """(run(reference, frames, seed) -> report dict, frame_bytes() -> dict, dtype, settings)."""
    if row.kind == "upstream":
        from engine.baseline import UpstreamBaseline

        base = UpstreamBaseline.from_checkpoint(checkpoint, compile=row.options["compile"])

        def run_upstream(ref: np.ndarray, frames: int, seed: int) -> dict[str, Any]:
            base.synthesize(TEXT, ref, REFERENCE_TEXT, fixed_frames=frames, seed=seed)
            return base.last_report.as_dict()

        return run_upstream, lambda: base.frame_bytes().as_dict(), base.dtype
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    engine = OptimizedFishSpeech.from_checkpoint(checkpoint, EngineProfile(**row.options))

    def run(ref: np.ndarray, frames: int, seed: int) -> dict[str, Any]:
        for _ in engine.synthesize_stream(
            TEXT, ref, REFERENCE_TEXT, fixed_frames=frames, seed=seed
        ):
            pass
        return engine.last_report.as_dict() | {
            "active_profile": engine.active_profile.knobs(),
            "fallbacks": engine.fallbacks,
        }

    return run, lambda: engine.frame_bytes().as_dict(), engine.dtype


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


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


def _measure_row(job: dict[str, Any]) -> dict[str, Any]:
    from engine.compile_cache import COMPILE_CACHE_ENV, compile_counters

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    os.environ[COMPILE_CACHE_ENV] = job["compile_cache"]
    row, frames, reference = job["row"], job["frames"], job["reference"]
    skips = CudagraphSkipReasons.attach()
    t0 = time.perf_counter()
    run, frame_bytes, dtype = _runner(row, job["checkpoint"])
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    first = run(reference, frames, 0)
    warmup_s = time.perf_counter() - t1
    counters = compile_counters()
    if job["compile_only"]:
        return {"warmup_s": warmup_s, "compile_counters": counters}
    if torch.cuda.is_available() and row.compiled and _cudagraph_skips():
        raise RuntimeError(
            f"inductor skipped CUDA graphs {_cudagraph_skips()} times: "
            + ("; ".join(skips.reasons) or "no reason logged")
        )
    reports = [run(reference, frames, seed) for seed in range(1, job["repeats"] + 1)]
    totals = [r["total_s"] for r in reports]
    fps = [r["frames_per_s"] for r in reports]

    def worst(key: str) -> float | None:
        values = [r[key] for r in reports if r.get(key) is not None]
        return max(values) if values else None

    def mean(key: str) -> float | None:
        values = [r[key] for r in reports if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    median_fps = statistics.median(fps)
    parts = frame_bytes()
    return {
        "row": row.name,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "warmup_s": warmup_s,
        "compile_counters": counters,
        "cudagraph_skips": _cudagraph_skips(),
        "cudagraph_skip_reasons": skips.reasons,
        "frames_per_s": median_fps,
        "frames_per_s_spread": (max(fps) - min(fps)) / median_fps,
        "ms_per_frame": 1000.0 / median_fps,
        "latency_p50_s": statistics.median(totals),
        "latency_max_s": max(totals),
        "ttfa_p50_s": statistics.median(r["ttfa_s"] for r in reports),
        "ttfa_first_request_s": first["ttfa_s"],
        "prefix_cache_hit": all(r.get("prefix_cache_hit") for r in reports),
        "kv_bucket": reports[-1].get("kv_bucket"),
        "rtf": statistics.median(r["rtf"] for r in reports),
        "peak_allocated_mb": worst("peak_allocated_mb"),
        "peak_reserved_mb": worst("peak_reserved_mb"),
        "host_rss_mb": worst("host_rss_mb"),
        "gpu_util_pct": mean("gpu_util_pct"),
        "j_per_audio_s": mean("j_per_audio_s"),
        "bytes_per_frame": parts,
        "achieved_gbs": parts["total"] * median_fps / 1e9,
        "stages_s": {
            k: statistics.median(r[k] for r in reports)
            for k in ("encode_s", "prefill_s", "decode_s", "codec_s")
        },
        "active_profile": reports[-1].get("active_profile"),
        "fallbacks": reports[-1].get("fallbacks", []),
        "timings_s": totals,
    }


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
    job = {
        "row": row,
        "checkpoint": checkpoint,
        "frames": frames,
        "repeats": repeats,
        "reference": reference,
        "threads": threads,
    }
    cold_s = None
    with tempfile.TemporaryDirectory() as tmp, _environment(row.env):
        job["compile_cache"] = str(compile_cache or Path(tmp) / "compile-cache")
        if row.compiled and cold_compile:
            cold = run_in_child(
                _measure_job, job | {"compile_only": True}, timeout_s, Path(tmp) / "cold.log"
            )
            if cold.result is None:
                return {"row": row.name, "error": cold.error}
            cold_s = cold.result["warmup_s"]
        outcome = run_in_child(
            _measure_job, job | {"compile_only": False}, timeout_s, Path(tmp) / "row.log"
        )
    if outcome.result is None:
        return {"row": row.name, "error": outcome.error}
    result = outcome.result | {"cold_warmup_s": cold_s, "compiled": row.compiled}
    # The warm-up is compile + one request; a steady-state request estimates the latter.
    work = result["latency_p50_s"]
    result["compile_s"] = max(0.0, result["warmup_s"] - work)
    result["cold_compile_s"] = None if cold_s is None else max(0.0, cold_s - work)
    return result


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


def _measure_job(job: dict[str, Any]) -> dict[str, Any]:
    return _measure_row(job)


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _preset(device: str) -> dict[str, Any]:
    """The ``conf/hardware`` preset that matches this device."""
    name = "cpu" if device == "cpu" else detect_hardware_preset(device)
    preset = OmegaConf.load(CONF_DIR / "hardware" / f"{name}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(HardwareConf), preset))


def fidelity_verdicts(fidelity_dir: Path, device: str, checkpoint: str) -> dict[str, dict]:
    """The latest fidelity spread for this device and checkpoint, keyed by what it ran as
    (``"cpu bf16 int8"``); empty when none was measured."""
    reports = sorted(fidelity_dir.glob(f"{device.replace(' ', '_')}-*.json"))
    for path in reversed(reports):
        data = json.loads(path.read_text())
        if Path(data["meta"]["checkpoint"]).name == Path(checkpoint).name:
            rows = {r["runs_as"]: r | {"report": path.name} for r in data["rows"] if "runs_as" in r}
            return rows
    return {}


def _verdict(result: dict[str, Any], device: str, verdicts: dict[str, dict]) -> str:
    profile = result.get("active_profile")
    if profile is None:
        return "reference (upstream)"
    if profile["precision"] == "fp32" and profile["quantization"] == "none":
        return "reference (fp32)"
    found = verdicts.get(f"{device} {profile['precision']} {profile['quantization']}")
    if found is None:
        return "not measured"
    failures = "; ".join(found.get("gate_failures") or [])
    return "pass" if found["passes_gates"] else f"fail ({failures})"


def _compile_cell(r: dict[str, Any]) -> str:
    if r.get("cold_compile_s") is None:
        return f"{r['compile_s']:.1f} (one process)" if r.get("compiled") else "eager"
    cold, warm = r["cold_compile_s"], r["compile_s"]
    return f"{cold:.1f} / {warm:.1f} ({warm / cold:.0%})" if cold else f"{cold:.1f} / {warm:.1f}"


def to_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The bench report: speed table, bytes-per-frame table, and the GPU projection."""
    head = (
        "| row | frames/s | spread | speed-up | ms/frame | TTFA ms (saved voice) | RTF "
        "| peak alloc MB | peak reserved / RSS MB | GPU % | GB/frame | GB/s | % of probe "
        "| compile s cold / warm | fidelity gates |\n|" + "---|" * 15
    )
    settings = ", ".join(f"`{k}={v}`" for k, v in meta["inductor_settings"].items())
    lines = [
        f"# fishbench bench: {meta['device']}",
        "",
        f"Model: {meta['model']}. Checkpoint `{meta['checkpoint']}` "
        f"({'synthetic' if meta['synthetic'] else 'real'} weights), {meta['frames']} fixed frames, "
        f"{meta['repeats']} timed repeats after one untimed warm-up, reference "
        f"{meta['reference_s']:.1f} s (its codes and prompt K/V cached after the warm-up: a saved "
        f"voice), torch {meta['torch']}, {meta['threads']} threads.",
        "",
        "Memory-bandwidth probe (sum of a 1 GiB tensor, best of 5): "
        f"**{meta['probe_gbs']:.1f} GB/s**"
        + (
            f"; datasheet ceiling {meta['bandwidth_ceiling_gbs']} GB/s."
            if meta.get("bandwidth_ceiling_gbs")
            else "."
        ),
        f"Inductor settings for every compiled row: {settings}.",
        "",
        head,
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['row']} | FAILED: {r['error'].strip().splitlines()[0]} |" + " |" * 13
            )
            continue
        gb = r["bytes_per_frame"]["total"] / 1e9
        cells = [
            r["row"],
            f"{r['frames_per_s']:.2f}",
            f"{r['frames_per_s_spread']:.1%}",
            figure(r.get("speedup"), ".2f", "x"),
            f"{r['ms_per_frame']:.1f}",
            f"{r['ttfa_p50_s'] * 1000:.0f}",
            f"{r['rtf']:.2f}",
            figure(r["peak_allocated_mb"], ".0f"),
            figure(r["peak_reserved_mb"] or r["host_rss_mb"], ".0f"),
            figure(r["gpu_util_pct"], ".0f"),
            f"{gb:.3f}",
            f"{r['achieved_gbs']:.1f}",
            figure(r.get("probe_fraction"), ".0%"),
            _compile_cell(r),
            r.get("fidelity", "n/a"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Speed-up: frames/s over `upstream-eager` in this run (decode only, prefill excluded for "
        "every row). Spread: (max - min) / median frames/s over the repeats.",
        "TTFA for upstream is its whole generation: it sends audio only after the segment is done.",
        "Compile: the warm-up request's time less a steady-state request's, in a process with an "
        "empty compile cache (cold) and in the timed process, started from that cache (warm).",
        "Fidelity gates: verdict of the latest `fishbench fidelity --spread` for this device and "
        f"checkpoint ({meta.get('fidelity_report') or 'none found'}).",
        "",
        "## Bytes per frame (engine.perf_model), GB",
        "",
        "| row | KV bucket | slow layers | fast layers (x10) | heads | KV cache | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            continue
        b = r["bytes_per_frame"]
        lines.append(
            f"| {r['row']} | {r.get('kv_bucket') or 'static'} | "
            + " | ".join(
                f"{b[k] / 1e9:.3f}"
                for k in ("slow_layers", "fast_layers", "heads", "kv_cache", "total")
            )
            + " |"
        )
    lines += [
        "",
        "## GPU rows, projected from the same model (bf16 weights, 2048 KV bucket)",
        "",
        "| row | GB/frame | frames/s at RTX 3060 (360 GB/s) | at RTX 4060 (272 GB/s) |",
        "|---|---|---|---|",
    ]
    for name, gb in meta["gpu_projection_gb"].items():
        lines.append(f"| {name} | {gb:.3f} | {360 / gb:.0f} | {272 / gb:.0f} |")
    lines.append(
        "\nProjection = bandwidth / bytes per frame: an upper bound that no GPU here measured."
    )
    return "\n".join(lines) + "\n"


def _model_label(checkpoint: str) -> str:
    from fish_speech.models.text2semantic.llama import BaseModelArgs

    from engine.upstream import build_dual_ar

    cfg = BaseModelArgs.from_pretrained(checkpoint)
    params = sum(p.numel() for p in build_dual_ar(Path(checkpoint), "meta").parameters())
    layers = f"{cfg.n_layer} slow + {cfg.n_fast_layer} fast layers"
    return f"DualAR {params / 1e6:.0f} M parameters ({layers})"


def run_bench(
    checkpoint: str,
    frames: int = 512,
    repeats: int = 5,
    out_dir: Path = Path("reports/bench"),
    reference: str | None = None,
    only: list[str] | None = None,
    fidelity_dir: Path = Path("reports/fidelity"),
    rows: list[Row] | None = None,
    cold_compile: bool = True,
    compile_cache: Path | None = None,
    deadline: float | None = None,
) -> Path:
    """Run every row (``rows``, else this device's), print the table, write JSON + Markdown named
    after the device and model. A row is not started after ``deadline`` (``time.monotonic()``)
    nor allowed to run past it. ``cold_compile`` and ``compile_cache`` are ``run_row``'s."""
    from fish_speech.models.text2semantic.llama import BaseModelArgs

    from engine import perf_model
    from engine.audio_io import read_audio_file
    from engine.checkpoint import CheckpointFolder
    from engine.compile_cache import inductor_settings
    from engine.profile import EngineProfile

    folder = CheckpointFolder.open(checkpoint)
    device = _device_name()
    preset = _preset(device)
    threads = preset.get("threads") or (os.cpu_count() if device == "cpu" else None)
    rows = rows or (GPU_ROWS if torch.cuda.is_available() else CPU_ROWS)
    rows = [r for r in rows if not only or r.name in only]
    ref = read_audio_file(reference) if reference else reference_signal()
    probe = probe_bandwidth_gbs("cuda" if device != "cpu" else "cpu")
    log.info("memory-bandwidth probe: %.1f GB/s", probe)
    verdicts = fidelity_verdicts(
        fidelity_dir, "cpu" if device == "cpu" else device, str(folder.path)
    )
    results = []
    for row in rows:
        left = ROW_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            results.append({"row": row.name, "error": "not run: over the time budget"})
            continue
        log.info("bench row %s ...", row.name)
        result = run_row(
            row,
            str(folder.path),
            frames,
            repeats,
            ref,
            threads,
            cold_compile,
            compile_cache,
            min(left, ROW_TIMEOUT_S),
        )
        if "error" in result:
            log.error("row %s failed: %s", row.name, result["error"].strip().splitlines()[0])
        results.append(result)
    baseline = next((r for r in results if r["row"] == "upstream-eager" and "error" not in r), None)
    for r in results:
        if "error" in r:
            continue
        r["speedup"] = r["frames_per_s"] / baseline["frames_per_s"] if baseline else None
        r["probe_fraction"] = r["achieved_gbs"] / probe
        r["fidelity"] = _verdict(r, "cpu" if device == "cpu" else device, verdicts)
    cfg = BaseModelArgs.from_pretrained(str(folder.path))
    meta = {
        "device": device,
        "model": _model_label(str(folder.path)),
        "checkpoint": str(folder.path),
        "synthetic": folder.is_synthetic,
        "frames": frames,
        "repeats": repeats,
        "threads": threads or torch.get_num_threads(),
        "reference_s": len(ref) / SAMPLE_RATE,
        "torch": torch.__version__,
        "probe_gbs": probe,
        "bandwidth_ceiling_gbs": preset.get("bandwidth_gb_s"),
        "inductor_settings": inductor_settings(EngineProfile()),
        "fidelity_report": next(iter(verdicts.values()), {}).get("report"),
        "gpu_projection_gb": {
            name: fb.total / 1e9 for name, fb in perf_model.gpu_projection(cfg).items()
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    size = "s1-mini" if cfg.n_layer >= 28 else Path(folder.path).name
    stem = out_dir / (
        f"{device.replace(' ', '_').replace('/', '_')}-{size}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    markdown = to_markdown(meta, results)
    Path(f"{stem}.md").write_text(markdown)
    print(markdown)
    return Path(f"{stem}.md")
