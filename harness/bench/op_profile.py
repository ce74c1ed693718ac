"""Where one synthesis spends its time, op by op: profile before you optimise.

One warmed-up ``synthesize`` call runs under ``torch.profiler``; the top ops by *self* time are
reported per generated frame, so engines, profiles and frame counts compare directly. Self times
do not double count (a parent's self time excludes its children), so their sum is the run's total.
On a GPU the ranking is by CUDA self time: the kernel time each CPU-side op launched itself.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.profiler
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from engine.errors import ConfigError
from engine.machine import device_name
from engine.model.checkpoint import CheckpointFolder
from engine.profile import EngineProfile
from harness.reports import stamp, write_report

log = logging.getLogger(__name__)

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."

# The profiler's own bookkeeping rows: step wrappers and memory markers, not work the model does.
_PROFILER_ROWS = re.compile(r"^(ProfilerStep#?\d*|\[memory\]|\[OutOfMemory\])$")
UNATTRIBUTED = "(GPU time launched outside any CPU op)"


def _profile_name(active: EngineProfile) -> str:
    """A short file-name-safe label for a profile, e.g. ``bf16-int8-compile-default``."""
    parts = [active.precision]
    if active.quantization != "none":
        parts.append(active.quantization)
    if active.compile_decode != "none":
        parts.append(f"compile-{active.compile_decode}")
    return "-".join(parts)


def _load(
    checkpoint: str, profile: EngineProfile | None, upstream: bool, frames: int, text: str
) -> tuple[Any, dict[str, Any]]:
    """Load and warm up the engine untimed, so the profiled run sees steady-state kernels."""
    if upstream:
        from engine.measure.baseline import UpstreamBaseline

        runner = UpstreamBaseline.from_checkpoint(checkpoint)
        runner.synthesize(text, fixed_frames=frames, seed=0)
        return runner, {"profile": "upstream", "knobs": None, "fallbacks": []}
    from engine.engine import OptimizedFishSpeech

    runner = OptimizedFishSpeech.from_checkpoint(checkpoint, profile)
    active = runner.active_profile
    if active.compiled:
        runner.warmup(text, frames, buckets=())  # compile + capture take more than one call
    else:
        runner.synthesize(text, fixed_frames=frames, seed=0)
    runner.semantic_cache.clear()  # the profiled run must generate, not replay cached codes
    return runner, {
        "profile": _profile_name(active),
        "knobs": active.knobs(),
        "fallbacks": [str(f) for f in runner.fallbacks],
    }


def _rows(averages: Any, on_gpu: bool, frames: int) -> tuple[list[dict[str, Any]], float]:
    """Every op's per-frame figures, sorted by self time, and the total self ms per frame."""
    rows = []
    for avg in averages:
        if avg.device_type != DeviceType.CPU or _PROFILER_ROWS.match(avg.key):
            continue  # device-side rows are counted through the CPU op that launched them
        self_us = avg.self_device_time_total if on_gpu else avg.self_cpu_time_total
        if self_us <= 0:
            continue
        row = {
            "op": avg.key,
            "calls": avg.count,
            "self_ms": self_us / 1e3,
            "calls_per_frame": avg.count / frames,
            "self_ms_per_frame": self_us / 1e3 / frames,
        }
        if on_gpu:
            row["self_cpu_ms_per_frame"] = avg.self_cpu_time_total / 1e3 / frames
        rows.append(row)
    attributed_ms = sum(row["self_ms"] for row in rows)
    total_ms = attributed_ms
    if on_gpu:  # the profiler's own GPU total: device rows, less GPU mirrors of annotations
        device_ms = sum(
            avg.self_device_time_total / 1e3
            for avg in averages
            if avg.device_type == DeviceType.CUDA and not getattr(avg, "is_user_annotation", False)
        )
        if device_ms > attributed_ms * 1.001:
            gap = device_ms - attributed_ms
            rows.append(
                {"op": UNATTRIBUTED, "calls": 0, "self_ms": gap, "calls_per_frame": 0.0}
                | {"self_ms_per_frame": gap / frames, "self_cpu_ms_per_frame": 0.0}
            )
            total_ms = device_ms
    for row in rows:
        row["share_pct"] = 100.0 * row["self_ms"] / total_ms if total_ms > 0 else 0.0
    rows.sort(key=lambda row: row["self_ms"], reverse=True)
    return rows, total_ms / frames


def profile_ops(
    checkpoint: str,
    profile: EngineProfile | None,
    *,
    upstream: bool = False,
    frames: int = 16,
    top: int = 20,
    text: str = DEFAULT_TEXT,
    name: str | None = None,
) -> dict[str, Any]:
    """Profile one warmed-up ``synthesize(text, fixed_frames=frames)`` of our engine under
    ``profile`` (env overrides if None) or of upstream; return ``{"meta": ..., "rows": ...}``
    with the ``top`` ops by self time, per generated frame. ``name`` labels the profile."""
    if frames < 1 or top < 1:
        raise ConfigError(f"frames and top must be at least 1, got {frames} and {top}")
    folder = CheckpointFolder.open(checkpoint)
    runner, about = _load(str(folder.path), profile, upstream, frames, text)
    on_gpu = runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    log.info("profiling %s on %s: %d frames", name or about["profile"], runner.device, frames)
    # No shapes or stacks: their recording cost would skew the very times being ranked.
    # One cycle only, so acc_events just silences the warning about clearing between cycles.
    with torch.profiler.profile(
        activities=activities, record_shapes=False, acc_events=True
    ) as prof:
        t0 = time.perf_counter()
        runner.synthesize(text, fixed_frames=frames, seed=1)
        if on_gpu:
            torch.cuda.synchronize(runner.device)
        wall_s = time.perf_counter() - t0
    report = runner.last_report
    if report.frames < 1:
        raise ValueError("the profiled run generated no frames; nothing to divide by")
    rows, total_ms_per_frame = _rows(prof.key_averages(), on_gpu, report.frames)
    meta = {
        "device": device_name(runner.device),
        "device_type": runner.device.type,
        "time_basis": "cuda" if on_gpu else "cpu",
        "profile": name or about["profile"],
        "upstream": upstream,
        "knobs": about["knobs"],
        "fallbacks": about["fallbacks"],
        "checkpoint": str(folder.path),
        "synthetic": folder.is_synthetic,
        "text": text,
        "frames": report.frames,
        "ops": len(rows),
        "total_self_ms_per_frame": total_ms_per_frame,
        "wall_ms_per_frame": 1e3 * wall_s / report.frames,
        "stage_ms_per_frame": {
            stage: 1e3 * getattr(report, f"{stage}_s") / report.frames
            for stage in ("prefill", "decode", "codec")
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return {"meta": meta, "rows": rows[:top]}


def to_markdown(result: dict[str, Any]) -> str:
    """The op table with the run's totals, for a terminal or a report folder."""
    meta, rows = result["meta"], result["rows"]
    basis = "CUDA" if meta["time_basis"] == "cuda" else "CPU"
    gpu = meta["time_basis"] == "cuda"
    stages = ", ".join(f"{k} {v:.2f}" for k, v in meta["stage_ms_per_frame"].items())
    lines = [
        f"# fishbench profile-ops: {meta['profile']} on {meta['device']}",
        "",
        f"checkpoint `{meta['checkpoint']}` ({'synthetic' if meta['synthetic'] else 'real'} "
        f"weights), {meta['frames']} frames, {meta['threads']} threads, torch {meta['torch']}.",
        "",
        f"total {basis} self time {meta['total_self_ms_per_frame']:.3f} ms/frame, "
        f"wall {meta['wall_ms_per_frame']:.3f} ms/frame (under the profiler; "
        f"stages ms/frame: {stages}).",
        "",
        f"| op | calls/frame | self {basis} ms/frame | share % |"
        + (" self CPU ms/frame |" if gpu else ""),
        "|---|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| `{r['op']}` | {r['calls_per_frame']:.2f} | {r['self_ms_per_frame']:.3f} "
            f"| {r['share_pct']:.1f} |" + (f" {r['self_cpu_ms_per_frame']:.3f} |" if gpu else "")
        )
    lines += [
        "",
        f"Top {len(rows)} of {meta['ops']} ops by self time. Per frame: the whole request "
        "(prompt, prefill, decode, codec) divided by the frames generated.",
    ]
    return "\n".join(lines) + "\n"


def write_profile(result: dict[str, Any], out_dir: Path) -> Path:
    """``<device>-<profile>-<time>.md`` and ``.json`` under ``out_dir``; returns the Markdown."""
    meta = result["meta"]
    label = f"{meta['device']}-{meta['profile']}".replace(" ", "_").replace("/", "_")
    return write_report(out_dir, f"{label}-{stamp()}", to_markdown(result), result)
