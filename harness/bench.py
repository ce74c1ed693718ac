"""``fishbench bench``: upstream (eager and ``--compile``) against our profiles on one checkpoint.

Every row runs in its own spawned process (caches, allocator and compile state never leak
between rows), warms up untimed (reported as compile time), then times ``repeats`` runs of a
fixed text with a fixed number of frames and a cached reference. Speeds are ratios to the
upstream eager row measured in the same run.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from harness.sweep_compose import CONF_DIR, detect_hardware_preset
from harness.trial_process import run_in_child

log = logging.getLogger(__name__)

TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."
)
REFERENCE_TEXT = "This is the reference recording of the speaker."
ROW_TIMEOUT_S = 600


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "upstream" or "engine"
    options: dict[str, Any] = field(default_factory=dict)


_COMPILED = {
    "compile_decode": "reduce-overhead",
    "compile_codec": "default",
    "compile_prefill": True,
    "num_streams": 2,
}
GPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("upstream-compile", "upstream", {"compile": True}),
    Row("ours-bf16-compiled", "engine", {"precision": "bf16", **_COMPILED}),
    Row("ours-int8", "engine", {"precision": "bf16", "quantization": "int8", **_COMPILED}),
    Row("ours-int4", "engine", {"precision": "bf16", "quantization": "int4", **_COMPILED}),
    Row(
        "ours-nf4 (experimental)",
        "engine",
        {"precision": "bf16", "quantization": "nf4", **_COMPILED, "fullgraph": False},
    ),
]
CPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("ours-fp32", "engine", {}),
    Row("ours-int8-dynamic", "engine", {"quantization": "int8"}),
    Row("ours-compiled", "engine", {"compile_decode": "default"}),
]


def reference_signal(seconds: float = 10.0, rate: int = 44_100) -> np.ndarray:
    """A deterministic 10 s speech-like signal; with random weights only its length matters."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
    noise = np.random.default_rng(0).normal(0, 0.02, t.shape)
    return (0.2 * envelope * voice + noise).astype(np.float32)


def bytes_per_frame(
    model: torch.nn.Module, slow_head: torch.Tensor, fast_head: torch.Tensor, codebooks: int
) -> int:
    """Weight bytes one frame reads: slow layers and head once, fast layers and head per step."""
    from engine.quantize import linear_weight_bytes

    fast_steps_with_head = codebooks - 1
    return (
        linear_weight_bytes(model.layers)
        + codebooks * linear_weight_bytes(model.fast_layers)
        + slow_head.numel() * slow_head.element_size()
        + fast_steps_with_head * fast_head.numel() * fast_head.element_size()
    )


def _runner(row: Row, checkpoint: str):
    """(synthesize(fixed_frames, seed) -> report dict, bytes per frame, compile hook)."""
    if row.kind == "upstream":
        from engine.baseline import UpstreamBaseline

        base = UpstreamBaseline.from_checkpoint(checkpoint, compile=row.options["compile"])
        model = base.model
        head = (
            model.output.weight if not model.config.tie_word_embeddings else model.embeddings.weight
        )
        per_frame = bytes_per_frame(
            model, head, model.fast_output.weight, model.config.num_codebooks + 1
        )

        def run(ref: np.ndarray, frames: int, seed: int) -> dict[str, Any]:
            base.synthesize(TEXT, ref, REFERENCE_TEXT, fixed_frames=frames, seed=seed)
            return base.last_report.as_dict()

        return run, per_frame, base.dtype
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    engine = OptimizedFishSpeech.from_checkpoint(checkpoint, EngineProfile(**row.options))
    dec = engine.decoder
    per_frame = bytes_per_frame(dec.model, dec.slow_head, dec.fast_head, dec.num_codebooks)

    def run(ref: np.ndarray, frames: int, seed: int) -> dict[str, Any]:
        for _ in engine.synthesize_stream(
            TEXT, ref, REFERENCE_TEXT, fixed_frames=frames, seed=seed
        ):
            pass
        return engine.last_report.as_dict() | {
            "active_profile": engine.active_profile.knobs(),
            "fallbacks": engine.fallbacks,
        }

    return run, per_frame, engine.dtype


def _measure_row(
    row: Row, checkpoint: str, frames: int, repeats: int, reference: np.ndarray
) -> dict[str, Any]:
    t0 = time.perf_counter()
    run, per_frame, dtype = _runner(row, checkpoint)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run(reference, frames, 0)
    warmup_s = time.perf_counter() - t1
    reports = [run(reference, frames, seed) for seed in range(1, repeats + 1)]
    totals = [r["total_s"] for r in reports]
    fps = statistics.median(r["frames_per_s"] for r in reports)

    def worst(key: str) -> float | None:
        values = [r[key] for r in reports if r.get(key) is not None]
        return max(values) if values else None

    def mean(key: str) -> float | None:
        values = [r[key] for r in reports if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {
        "row": row.name,
        "dtype": str(dtype).replace("torch.", ""),
        "load_s": load_s,
        "warmup_s": warmup_s,
        "frames_per_s": fps,
        "ms_per_frame": 1000.0 / fps,
        "latency_p50_s": statistics.median(totals),
        "latency_max_s": max(totals),
        "ttfa_p50_s": statistics.median(r["ttfa_s"] for r in reports),
        "rtf": statistics.median(r["rtf"] for r in reports),
        "peak_allocated_mb": worst("peak_allocated_mb"),
        "peak_reserved_mb": worst("peak_reserved_mb"),
        "gpu_util_pct": mean("gpu_util_pct"),
        "j_per_audio_s": mean("j_per_audio_s"),
        "bytes_per_frame": per_frame,
        "achieved_gbs": per_frame * fps / 1e9,
        "stages_s": {
            k: statistics.median(r[k] for r in reports)
            for k in ("encode_s", "prefill_s", "decode_s", "codec_s")
        },
        "active_profile": reports[-1].get("active_profile"),
        "fallbacks": reports[-1].get("fallbacks", []),
        "timings_s": totals,
    }


def _measure_job(job: dict[str, Any]) -> dict[str, Any]:
    return _measure_row(
        job["row"], job["checkpoint"], job["frames"], job["repeats"], job["reference"]
    )


def run_row(
    row: Row, checkpoint: str, frames: int, repeats: int, reference: np.ndarray
) -> dict[str, Any]:
    """Measure one row in a spawned process; a crash or timeout becomes an ``error`` entry."""
    job = {"row": row, "checkpoint": checkpoint, "frames": frames, "repeats": repeats}
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_in_child(
            _measure_job, {**job, "reference": reference}, ROW_TIMEOUT_S, Path(tmp) / "row.log"
        )
    return (
        outcome.result if outcome.result is not None else {"row": row.name, "error": outcome.error}
    )


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _ceiling_gbs(device: str) -> float | None:
    """Memory bandwidth of the ``conf/hardware`` preset that matches this GPU (None on CPU)."""
    if device == "cpu":
        return None
    preset = OmegaConf.load(CONF_DIR / "hardware" / f"{detect_hardware_preset(device)}.yaml")
    return preset.get("bandwidth_gb_s")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def to_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    head = (
        "| row | frames/s | ms/frame | TTFA ms | RTF | peak alloc MB | peak reserved MB | GPU % "
        "| J/audio s "
        "| speed-up | BW fraction | warm-up s |\n|" + "---|" * 12
    )
    lines = [
        f"# fishbench bench: {meta['device']}",
        "",
        f"checkpoint `{meta['checkpoint']}` "
        f"({'synthetic' if meta['synthetic'] else 'real'} weights), "
        f"{meta['frames']} fixed frames, {meta['repeats']} repeats after one untimed warm-up, "
        f"reference {meta['reference_s']:.1f} s (cached for our rows), torch {meta['torch']}.",
        "",
        head,
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['row']} | FAILED: {r['error'].strip().splitlines()[0]} |" + " |" * 10
            )
            continue
        cells = [
            r["row"],
            f"{r['frames_per_s']:.1f}",
            f"{r['ms_per_frame']:.2f}",
            f"{r['ttfa_p50_s'] * 1000:.0f}",
            f"{r['rtf']:.3f}",
            _fmt(r["peak_allocated_mb"], ".0f"),
            _fmt(r["peak_reserved_mb"], ".0f"),
            _fmt(r["gpu_util_pct"], ".0f"),
            _fmt(r["j_per_audio_s"]),
            f"{_fmt(r.get('speedup'))}x",
            _fmt(r.get("bandwidth_fraction"), ".1%"),
            f"{r['warmup_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Speed-up: frames/s over `upstream-eager` in this run.",
        "BW fraction: weight bytes read per frame x frames/s over the GPU's bandwidth ceiling.",
        "TTFA for upstream is its whole generation: it sends audio only after the segment is done.",
    ]
    return "\n".join(lines) + "\n"


def run_bench(
    checkpoint: str,
    frames: int = 512,
    repeats: int = 5,
    out_dir: Path = Path("reports/bench"),
    reference: str | None = None,
    only: list[str] | None = None,
) -> Path:
    """Run every row, print the table, write JSON + Markdown named after the device."""
    from engine.audio_io import read_audio_file
    from engine.checkpoint import CheckpointFolder

    folder = CheckpointFolder.open(checkpoint)
    device = _device_name()
    rows = GPU_ROWS if torch.cuda.is_available() else CPU_ROWS
    rows = [r for r in rows if not only or r.name in only]
    ref = read_audio_file(reference) if reference else reference_signal()
    results = []
    for row in rows:
        log.info("bench row %s ...", row.name)
        result = run_row(row, str(folder.path), frames, repeats, ref)
        if "error" in result:
            log.error("row %s failed: %s", row.name, result["error"].strip().splitlines()[0])
        results.append(result)
    baseline = next((r for r in results if r["row"] == "upstream-eager" and "error" not in r), None)
    ceiling = _ceiling_gbs(device)
    for r in results:
        if "error" in r:
            continue
        r["speedup"] = r["frames_per_s"] / baseline["frames_per_s"] if baseline else None
        r["bandwidth_fraction"] = r["achieved_gbs"] / ceiling if ceiling else None
    meta = {
        "device": device,
        "checkpoint": str(folder.path),
        "synthetic": folder.is_synthetic,
        "frames": frames,
        "repeats": repeats,
        "reference_s": len(ref) / 44_100,
        "torch": torch.__version__,
        "bandwidth_ceiling_gbs": ceiling,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (
        out_dir / f"{device.replace(' ', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    markdown = to_markdown(meta, results)
    Path(f"{stem}.md").write_text(markdown)
    print(markdown)
    return Path(f"{stem}.md")
