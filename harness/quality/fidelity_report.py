"""Fidelity of several profiles against one fp32 run, written as JSON + Markdown.

The spread of these figures across precisions and quantization schemes on one checkpoint is what
the gates in ``engine.measure.fidelity.FIDELITY_GATES`` are chosen from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.engine import OptimizedFishSpeech
from engine.machine import device_name
from engine.measure.fidelity import FidelityReference, compare_profile, flatness, gate_failures
from engine.model.checkpoint import CheckpointFolder
from engine.profile import EngineProfile
from harness.reports import markdown_table, stamp, write_report

log = logging.getLogger(__name__)


def spread() -> dict[str, EngineProfile]:
    """bf16 and its quantization schemes (int8, int4, nf4), plus fp32 int8 (dynamic int8 on CPU).

    Eager, as compilation changes kernels, not the quantization arithmetic these figures measure;
    but bf16 int8 is compiled where CUDA runs it, its only form there (eager it resolves to none).
    A CPU runs it eager too: compiling would add a minute and change no teacher-forced figure.
    """
    int8_compile = "default" if torch.cuda.is_available() else "none"
    return {
        "bf16": EngineProfile(precision="bf16"),
        "bf16-int8": EngineProfile(
            precision="bf16", quantization="int8", compile_decode=int8_compile
        ),
        "bf16-int4": EngineProfile(precision="bf16", quantization="int4"),
        "bf16-nf4": EngineProfile(precision="bf16", quantization="nf4"),
        "fp32-int8": EngineProfile(precision="fp32", quantization="int8"),
    }


def _runs_as(engine: OptimizedFishSpeech) -> str:
    active = engine.active_profile
    return f"{active.device} {active.precision} {active.quantization}"


def run_fidelity(
    checkpoint: str,
    profiles: dict[str, EngineProfile],
    frames: int = 32,
    text: str = "The quick brown fox jumps over the lazy dog.",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Compare every profile with one fp32 reference; a failing profile is recorded, not fatal."""
    folder = CheckpointFolder.open(checkpoint)
    started = time.perf_counter()
    reference = FidelityReference.build(str(folder.path), text=text, frames=frames)
    rows = []
    for name, profile in profiles.items():
        log.info("fidelity of %s ...", name)
        row: dict[str, Any] = {"profile": name, "runs_as": "n/a"}
        try:
            candidate = OptimizedFishSpeech.from_checkpoint(folder.path, profile)
            row["runs_as"] = _runs_as(candidate)
            figures = compare_profile(candidate, reference)
            failures = gate_failures(figures)
            row |= {**figures, "passes_gates": not failures, "gate_failures": failures}
        except Exception as exc:  # one broken scheme must not lose the others' figures
            log.exception("fidelity of %s failed", name)
            row["error"] = f"{type(exc).__name__}: {exc}"
        candidate = None  # free this profile's weights before loading the next
        rows.append(row)
        if on_row is not None:
            on_row(row)
    meta = {
        "device": device_name(),
        "checkpoint": str(folder.path),
        "synthetic": folder.is_synthetic,
        "frames": frames,
        "text": text,
        "reference_flatness": {
            "slow": flatness(reference.logits.slow_logits),
            "fast": flatness(reference.logits.fast_logits),
        },
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return meta, rows


COLUMNS = (
    "profile",
    "runs as",
    "slow KL",
    "slow top-1",
    "fast KL",
    "fast top-1",
    "codec SNR dB",
    "stream max diff",
    "gates",
)


def _cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["profile"], r["runs_as"], f"FAILED: {r['error']}", *[""] * 6]
    gates = "pass" if r["passes_gates"] else "FAIL: " + "; ".join(r["gate_failures"])
    return [
        r["profile"],
        r["runs_as"],
        f"{r['slow_kl']:.2e}",
        f"{r['slow_top1']:.3f}",
        f"{r['fast_kl']:.2e}",
        f"{r['fast_top1']:.3f}",
        f"{r['codec_snr_db']:.1f}",
        f"{r['stream_max_abs_diff']:.1e}",
        gates,
    ]


def to_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# fishbench fidelity: {meta['device']}",
        "",
        f"checkpoint `{meta['checkpoint']}` ({'synthetic' if meta['synthetic'] else 'real'} "
        f"weights), {meta['frames']} teacher-forced frames against fp32, torch {meta['torch']}, "
        f"{meta['seconds']:.0f} s.",
        "",
        "fp32 reference entropy, slow / fast head: "
        + " / ".join(
            f"{f['entropy']:.2f} of at most {f['max_entropy']:.2f} nats (uniform output: "
            f"KL {f['uniform_kl']:.2f})"
            for f in meta["reference_flatness"].values()
        )
        + ".",
        "",
    ]
    lines += markdown_table(COLUMNS, [_cells(r) for r in rows])
    lines += [
        "",
        "KL: mean KL(fp32 || profile) per position, in nats. Codec SNR: the profile's codec "
        "against fp32 decoding of the same codes. Stream max diff: streamed vs one-shot audio "
        "of the profile itself.",
    ]
    return "\n".join(lines) + "\n"


def write_fidelity(meta: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """``<device>-<time>.json`` and ``.md`` under ``out_dir``; returns the Markdown path."""
    device = meta["device"].replace(" ", "_").replace("/", "_")
    data = {"meta": meta, "rows": rows}
    return write_report(out_dir, f"{device}-{stamp()}", to_markdown(meta, rows), data)
