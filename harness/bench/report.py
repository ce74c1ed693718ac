"""The bench's report: the speed table, the bytes-per-frame table and the GPU projection; with
``--concurrency``, the concurrency table instead."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from engine.model.checkpoint import CheckpointFolder
from engine.telemetry import figure
from harness.reports import markdown_table


def fidelity_verdicts(fidelity_dir: Path, device: str, checkpoint: str) -> dict[str, dict]:
    """The latest fidelity spread for this device and checkpoint, keyed by what it ran as
    (``"cpu bf16 int8"``); empty when none was measured."""
    reports = sorted(fidelity_dir.glob(f"{device.replace(' ', '_')}-*.json"))
    for path in reversed(reports):
        data = json.loads(path.read_text())
        if Path(data["meta"]["checkpoint"]).name == Path(checkpoint).name:
            return {r["runs_as"]: r | {"report": path.name} for r in data["rows"] if "runs_as" in r}
    return {}


def verdict(result: dict[str, Any], device: str, verdicts: dict[str, dict]) -> str:
    """A row's fidelity verdict, from the spread report of what the row ran as."""
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


def _model_label(checkpoint: str) -> str:
    from fish_speech.models.text2semantic.llama import BaseModelArgs

    from engine.model.upstream import build_dual_ar

    cfg = BaseModelArgs.from_pretrained(checkpoint)
    params = sum(p.numel() for p in build_dual_ar(Path(checkpoint), "meta").parameters())
    layers = f"{cfg.n_layer} slow + {cfg.n_fast_layer} fast layers"
    return f"DualAR {params / 1e6:.0f} M parameters ({layers})"


def run_meta(
    folder: CheckpointFolder,
    device: str,
    frames: int,
    repeats: int,
    threads: int | None,
    reference_s: float,
    probe_gbs: float | None,
) -> dict[str, Any]:
    """What the report's header says about the run (``probe_gbs`` None: not probed)."""
    from fish_speech.models.text2semantic.llama import BaseModelArgs

    from engine.compile_cache import inductor_settings
    from engine.measure import perf_model
    from engine.profile import EngineProfile

    cfg = BaseModelArgs.from_pretrained(str(folder.path))
    return {
        "device": device,
        "device_slug": re.sub(r"[ /]", "_", device),
        "size": "s1-mini" if cfg.n_layer >= 28 else folder.path.name,
        "model": _model_label(str(folder.path)),
        "checkpoint": str(folder.path),
        "synthetic": folder.is_synthetic,
        "frames": frames,
        "repeats": repeats,
        "threads": threads or torch.get_num_threads(),
        "reference_s": reference_s,
        "torch": torch.__version__,
        "probe_gbs": probe_gbs,
        "inductor_settings": inductor_settings(EngineProfile()),
        "gpu_projection_gb": {
            name: fb.total / 1e9 for name, fb in perf_model.gpu_projection(cfg).items()
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _compile_cell(r: dict[str, Any]) -> str:
    if r.get("cold_compile_s") is None:
        return f"{r['compile_s']:.1f} (one process)" if r.get("compiled") else "eager"
    cold, warm = r["cold_compile_s"], r["compile_s"]
    return f"{cold:.1f} / {warm:.1f} ({warm / cold:.0%})" if cold else f"{cold:.1f} / {warm:.1f}"


SPEED_COLUMNS = (
    "row",
    "frames/s",
    "spread",
    "speed-up",
    "ms/frame",
    "TTFA ms (saved voice)",
    "RTF",
    "peak alloc MB",
    "peak reserved / RSS MB",
    "GPU %",
    "GB/frame",
    "GB/s",
    "% of probe",
    "compile s cold / warm",
    "fidelity gates",
)


def _speed_cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["row"], f"FAILED: {r['error'].strip().splitlines()[0]}", *[""] * 13]
    return [
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
        f"{r['gb_per_frame']:.3f}",
        f"{r['achieved_gb_s']:.1f}",
        figure(r.get("probe_fraction"), ".0%"),
        _compile_cell(r),
        r.get("fidelity", "n/a"),
    ]


def _header(meta: dict[str, Any]) -> list[str]:
    settings = ", ".join(f"`{k}={v}`" for k, v in meta["inductor_settings"].items())
    ceiling = meta.get("bandwidth_ceiling_gbs")
    return [
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
        + (f"; datasheet ceiling {ceiling} GB/s." if ceiling else "."),
        f"Inductor settings for every compiled row: {settings}.",
        "",
    ]


def _notes(meta: dict[str, Any]) -> list[str]:
    return [
        "",
        "Speed-up: frames/s over `upstream-eager` in this run (decode only, prefill excluded for "
        "every row). Spread: (max - min) / median frames/s over the repeats.",
        "TTFA for upstream is its whole generation: it sends audio only after the segment is done.",
        "Compile: the warm-up request's time less a steady-state request's, in a process with an "
        "empty compile cache (cold) and in the timed process, started from that cache (warm).",
        "Fidelity gates: verdict of the latest `fishbench fidelity --spread` for this device and "
        f"checkpoint ({meta.get('fidelity_report') or 'none found'}).",
    ]


STAGE_COLUMNS = (
    "row",
    "prefill ms/frame",
    "decode ms/frame",
    "codec ms/frame (one-shot)",
    "codec ms/frame (streamed)",
    "sum, streamed",
    "streamed RTF",
)
REAL_TIME_MS = 1000.0 * 2048 / 44100  # one frame of audio: 46.4 ms


def _stage_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where a frame's time goes, stage by stage (medians over the repeats)."""
    cells = []
    for r in rows:
        if "error" in r:
            continue
        streamed = r.get("stream_codec_ms_per_frame")
        parts = (r.get("prefill_ms_per_frame"), r.get("decode_ms_per_frame"), streamed)
        total = sum(parts) if all(p is not None for p in parts) else None
        cells.append(
            (
                r["row"],
                figure(r.get("prefill_ms_per_frame"), ".1f"),
                figure(r.get("decode_ms_per_frame"), ".1f"),
                figure(r.get("codec_ms_per_frame"), ".1f"),
                figure(streamed, ".1f"),
                figure(total, ".1f"),
                figure(r.get("stream_rtf"), ".2f"),
            )
        )
    return [
        "",
        "## Stages per frame, ms",
        "",
        *markdown_table(STAGE_COLUMNS, cells),
        "",
        f"Real time is {REAL_TIME_MS:.1f} ms per frame. Streamed codec: the chunks of a stream, "
        "each decoded with its left context. Streamed RTF: seconds from the first chunk to the "
        "last over the audio after the first chunk (at or below 1, playback started at the first "
        "chunk never waits). Upstream has no stream.",
    ]


def _bytes_table(rows: list[dict[str, Any]]) -> list[str]:
    parts = ("slow_layers", "fast_layers", "heads", "kv_cache", "total")
    head = ("row", "KV bucket", "slow layers", "fast layers (x10)", "heads", "KV cache", "total")
    cells = [
        (r["row"], r.get("kv_bucket") or "static")
        + tuple(f"{r['bytes_per_frame'][k] / 1e9:.3f}" for k in parts)
        for r in rows
        if "error" not in r
    ]
    title = "## Bytes per frame (engine.measure.perf_model), GB"
    return ["", title, "", *markdown_table(head, cells)]


def _projection(meta: dict[str, Any]) -> list[str]:
    head = ("row", "GB/frame", "frames/s at RTX 3060 (360 GB/s)", "at RTX 4060 (272 GB/s)")
    cells = [
        (name, f"{gb:.3f}", f"{360 / gb:.0f}", f"{272 / gb:.0f}")
        for name, gb in meta["gpu_projection_gb"].items()
    ]
    return [
        "",
        "## GPU rows, projected from the same model (bf16 weights, 2048 KV bucket)",
        "",
        *markdown_table(head, cells),
        "\nProjection = bandwidth / bytes per frame: an upper bound that no GPU here measured.",
    ]


def to_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The bench report: speed table, bytes-per-frame table, and the GPU projection."""
    table = markdown_table(SPEED_COLUMNS, [_speed_cells(r) for r in rows])
    lines = _header(meta) + table + _notes(meta)
    tables = _stage_table(rows) + _bytes_table(rows) + _projection(meta)
    return "\n".join(lines + tables) + "\n"


CONCURRENCY_COLUMNS = (
    "row",
    "concurrency",
    "max_batch",
    "aggregate frames/s",
    "vs c=1",
    "spread",
    "decode frames/s",
    "decode vs c=1",
    "per-request frames/s",
    "RTF max",
    "TTFA p50 ms",
    "TTFA p95 ms",
    "queue ms",
    "batch occupancy",
)


def _concurrency_cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        first = r["error"].strip().splitlines()[0]
        return [r["row"], str(r["concurrency"]), f"FAILED: {first}", *[""] * 11]
    ratio = r["ratio_to_concurrency_1"]
    return [
        r["row"],
        str(r["concurrency"]),
        str(r["max_batch"]) + (" (raised)" if r["max_batch"] != r["max_batch_asked"] else ""),
        f"{r['aggregate_frames_per_s']:.1f}",
        figure(ratio["aggregate_frames_per_s"], ".2f", "x"),
        f"{r['aggregate_frames_per_s_spread']:.1%}",
        f"{r['aggregate_decode_frames_per_s']:.1f}",
        figure(ratio["aggregate_decode_frames_per_s"], ".2f", "x"),
        figure(r["per_request_frames_per_s"], ".1f"),
        figure(r["per_request_rtf_max"], ".2f"),
        f"{r['ttfa_p50_s'] * 1000:.0f}",
        f"{r['ttfa_p95_s'] * 1000:.0f}",
        figure(None if r["queue_s"] is None else r["queue_s"] * 1000, ".1f"),
        figure(r["batch_occupancy"], ".2f"),
    ]


def concurrency_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The ``--concurrency`` report: one line per engine row and concurrency, and what each
    column means."""
    levels = " ".join(map(str, meta["concurrency"]))
    notes = sorted({n for r in rows for n in r.get("notes", [])})
    lines = [
        f"# fishbench bench --concurrency {levels}: {meta['device']}",
        "",
        f"Model: {meta['model']}. Checkpoint `{meta['checkpoint']}` "
        f"({'synthetic' if meta['synthetic'] else 'real'} weights), torch {meta['torch']}, "
        f"{meta['threads']} threads. Each request streams {meta['frames']} fixed frames with its "
        f"own text and seed and a saved voice ({meta['reference_s']:.1f} s reference); per "
        f"concurrency one untimed round, then {meta['repeats']} timed rounds, the requests of a "
        "round released together.",
        *(["", *(f"Note: {n}." for n in notes)] if notes else []),
        "",
        *markdown_table(CONCURRENCY_COLUMNS, [_concurrency_cells(r) for r in rows]),
        "",
        "Aggregate frames/s: all frames of a round over its wall time, from the release to the "
        "last request's last audio (codec included); the median over rounds, spread (max - min) "
        "/ median. Decode frames/s: the same frames over the decode phase, from the release to "
        "the last request's last frame (its start + reference lookup + queue + prefill + decode "
        "in the engine's report). vs c=1: ratio to concurrency 1 of the same row in this run.",
        "Per-request frames/s and RTF: each request's frames (audio seconds) over its own wall "
        "time, release to last audio; mean and max over every request of every round. TTFA: "
        "release to the request's first audio chunk, as its caller sees it. Queue: the engine's "
        "wait for a free decoding slot (mean); batch occupancy: mean requests decoding together "
        "during a request's frames (engine report).",
    ]
    return "\n".join(lines) + "\n"
