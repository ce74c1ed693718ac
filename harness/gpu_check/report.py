"""A part's report: ``<device>-check-part<N>.md`` and ``.json`` (and the bench and fidelity
tables it links, copied beside it)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path
from typing import Any

from harness.gpu_check.plan import PARTS
from harness.gpu_check.steps import TTFA_ROW, Run
from harness.reports import markdown_table, write_report


def slug(name: str) -> str:
    """A device name as a file-name part: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _mb(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _head(run: Run) -> list[str]:
    plan, ctx = run.plan, run.context
    title, _, _, estimate = PARTS[run.part]
    env = ctx.get("environment", {})
    mode = (
        "DRY RUN on the CPU (tiny checkpoint; compiled rows compiled, codec eager): proves the "
        "wiring, not the GPU"
        if plan.dry_run
        else "GPU run"
    )
    total = time.monotonic() - run.started
    lines = [
        f"# GPU check, part {run.part} ({title}): {ctx.get('device_name', 'unknown device')}",
        "",
        f"{mode}. {time.strftime('%Y-%m-%d %H:%M:%S')}; {total:.0f} s of a {plan.budget_s:.0f} s "
        f"budget (projected on an H100: {estimate}). Environment: "
        + ", ".join(f"{k} `{v}`" for k, v in env.items())
        + ".",
        "",
    ]
    rows = [(s.name, s.status, f"{s.seconds:.1f}", s.summary) for s in run.steps]
    return lines + markdown_table(("step", "status", "seconds", "summary"), rows)


def _sdpa_cells(r: dict[str, Any]) -> tuple[object, ...]:
    if "error" in r:
        return (r["precision"], r["shape"], f"FAILED: {r['error']}", "", "")
    backend = f"{r['backend']} (`{r['op']}`)"
    strides = tuple(r["kernel_out_strides"])
    return (r["precision"], r["shape"], backend, strides, r["result_contiguous"])


def _sdpa(rows: list[dict[str, Any]]) -> list[str]:
    head = ("precision", "call", "backend", "kernel output strides", "result contiguous")
    title = "## SDPA kernel per precision (dispatch trace of `grouped_attention`)"
    return ["", title, "", *markdown_table(head, [_sdpa_cells(r) for r in rows])]


def _fidelity(fidelity: dict[str, Any]) -> list[str]:
    lines = ["", "## Fidelity against fp32", "", f"Report: `{fidelity['report']}`", ""]
    for r in fidelity["rows"]:
        if "error" in r:
            lines.append(f"- {r['profile']}: FAILED {r['error']}")
            continue
        gates = "pass" if r["passes_gates"] else "FAIL " + "; ".join(r["gate_failures"])
        lines.append(
            f"- {r['profile']} ({r['runs_as']}): slow KL {r['slow_kl']:.2e}, top-1 "
            f"{r['slow_top1']:.3f}; fast KL {r['fast_kl']:.2e}, top-1 {r['fast_top1']:.3f}; "
            f"codec SNR {r['codec_snr_db']:.1f} dB: {gates}"
        )
    return lines


BENCH_COLUMNS = (
    "row",
    "frames/s",
    "speed-up",
    "KV bucket",
    "TTFA ms",
    "peak alloc / reserved MB",
    "compile s",
    "CUDA-graph skips",
)


def _bench_cells(r: dict[str, Any]) -> tuple[object, ...]:
    if "error" in r:
        return (r["row"], f"FAILED: {' '.join(r['error'].split())[:300]}", *[""] * 6)
    reasons = "; ".join(r.get("cudagraph_skip_reasons") or [])
    return (
        r["row"],
        f"{r['frames_per_s']:.1f}",
        "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x",
        r.get("kv_bucket") or "static",
        f"{r['ttfa_p50_s'] * 1000:.0f}",
        f"{_mb(r['peak_allocated_mb'])} / {_mb(r['peak_reserved_mb'])}",
        f"{r['compile_s']:.1f}",
        f"{r.get('cudagraph_skips', 0)}{f' ({reasons})' if reasons else ''}",
    )


def _bench(bench: dict[str, Any]) -> list[str]:
    meta = bench["meta"]
    return [
        "",
        f"## Bench ({meta['frames']} frames, {meta['repeats']} repeats, "
        f"{meta['reference_s']:.0f} s saved voice)",
        "",
        f"Full table: `{bench['report']}`. Probe {meta['probe_gbs']:.0f} GB/s.",
        "",
        *markdown_table(BENCH_COLUMNS, [_bench_cells(r) for r in bench["rows"]]),
    ]


def _ttfa(t: dict[str, Any], reference_s: float) -> list[str]:
    ttfa = t["ttfa_s"]
    return [
        "",
        "## Time to first audio with a saved voice",
        "",
        f"Profile `{TTFA_ROW}`, the bench's text and frames with a {reference_s:.0f} s voice "
        f"saved once (codes in the engine's on-disk reference cache); KV bucket {t['kv_bucket']}. "
        f"Load {t['load_s']:.1f} s; warm-up requests {t['warmup_s']:.1f} s, the first one's TTFA "
        f"{t['first_request_ttfa_s'] * 1000:.0f} ms. Then {ttfa['count']:.0f} requests "
        f"({t['prefix_cache_hits']} with the voice's prompt K/V cached): TTFA p50 "
        f"**{ttfa['p50'] * 1000:.0f} ms**, p95 {ttfa['p95'] * 1000:.0f} ms, max "
        f"{ttfa['max'] * 1000:.0f} ms. Resident after load: bytes model "
        f"{t['resident_model_mb']:.0f} MB, allocated {t['allocated_after_load_mb']:.0f} MB. "
        f"Peak allocated {_mb(t['peak_allocated_mb'])} MB, reserved {_mb(t['peak_reserved_mb'])} "
        f"MB, NVML process {_mb(t['nvml_process_mb'])} MB; host RSS {_mb(t['host_rss_mb'])} MB.",
    ]


def _startup(ctx: dict[str, Any]) -> list[str]:
    lines = []
    if ctx.get("warmup"):
        w = ctx["warmup"]
        lines += [
            "",
            "## Start-up: `engine.warmup()` as the service runs it",
            "",
            f"Load {w['load_s']:.1f} s, warm-up **{w['warmup_s']:.1f} s** over KV buckets "
            f"{w['buckets']} and codec lengths {w['codec_lengths']}; compile cache "
            + ", ".join(f"{k} {v}" for k, v in w["compile_cache"].items() if v)
            + ".",
        ]
    if ctx.get("default_request"):
        r = ctx["default_request"]
        lines += [
            "",
            f"Default request (end of speech, no fixed frames): {r['frames']} frames, "
            f"{r['audio_s']:.1f} s of audio in {r['total_s']:.1f} s, first audio "
            f"{r['ttfa_s'] * 1000:.0f} ms, KV bucket {r['kv_bucket']}.",
        ]
    for name, r in (ctx.get("vram_budgets") or {}).items():
        outcome = (
            f"FAILED: {' '.join(r['error'].split())[:300]}"
            if "error" in r
            else f"fits; peak allocated {_mb(r['peak_allocated_mb'])} MB, reserved "
            f"{_mb(r['peak_reserved_mb'])} MB, {r['frames']} frames"
        )
        lines.append(f"- VRAM budget {name}: {outcome}")
    return lines


def to_markdown(run: Run) -> str:
    ctx = run.context
    lines = _head(run)
    if ctx.get("sdpa"):
        lines += _sdpa(ctx["sdpa"])
    if ctx.get("fidelity"):
        lines += _fidelity(ctx["fidelity"])
    if ctx.get("bench"):
        lines += _bench(ctx["bench"])
    if ctx.get("ttfa"):
        lines += _ttfa(ctx["ttfa"], run.plan.reference_s)
    lines += _startup(ctx)
    return "\n".join(lines) + "\n"


def write_reports(run: Run) -> Path:
    """The part's Markdown and JSON under the plan's out_dir, with the bench and fidelity
    reports it links copied beside it; returns the Markdown's path."""
    out = run.plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(run.context.get('device_name', 'unknown'))}-check-part{run.part}"
    for key in ("bench", "fidelity"):
        if run.context.get(key):
            source = Path(run.context[key]["report"])
            for suffix in (".md", ".json"):
                shutil.copyfile(source.with_suffix(suffix), out / f"{stem}-{key}{suffix}")
            run.context[key]["report"] = f"{stem}-{key}.md"
    data = {
        "part": run.part,
        "plan": {k: str(v) for k, v in dataclasses.asdict(run.plan).items()},
        "steps": [dataclasses.asdict(s) for s in run.steps],
        "context": run.context,
    }
    return write_report(out, stem, to_markdown(run), data)
