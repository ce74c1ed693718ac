"""The report's PNG plots: latency vs peak memory with the Pareto front, and per-stage latency.

Matplotlib's object API (``Figure``) is used instead of pyplot so plotting never touches a GUI
backend or global figure state; it is imported when a plot is drawn, which keeps the spawned trial
processes (they import the sweep module) from loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.trial.metrics import STAGES
from harness.trial.record import TrialRecord


def memory_axis(records: Sequence[TrialRecord]) -> tuple[str, str]:
    """The memory metric to plot and its label: reserved VRAM, or host RSS where VRAM is n/a."""
    if any(r.metric("peak_reserved_mb") is not None for r in records):
        return "peak_reserved_mb", "peak reserved VRAM (MB)"
    return "host_rss_mb", "peak host RSS (MB); VRAM n/a on CPU"


def plot_latency_vs_memory(
    records: Sequence[TrialRecord], path: Path, winner: str | None, front: Sequence[str]
) -> Path:
    """Every measured trial with its p50's 95 % interval as an error bar; ``front`` (trial names,
    the report's Pareto front) joined by a step line."""
    from matplotlib.figure import Figure

    key, label = memory_axis(records)
    shown = [
        r
        for r in records
        if r.ok and r.metric(key) is not None and r.metric("latency_p50_s") is not None
    ]
    points = [(r.metric(key), r.metric("latency_p50_s")) for r in shown]
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for record, (x, y) in zip(shown, points, strict=True):
        style = (
            {"marker": "s", "color": "tab:gray"}
            if record.is_baseline
            else {"marker": "o", "color": "tab:blue"}
        )
        if record.name == winner:
            style = {"marker": "*", "color": "tab:red", "s": 180}
        ax.scatter(x, y, zorder=3, **style)
        low, high = record.metric("latency_p50_s_ci_low"), record.metric("latency_p50_s_ci_high")
        if low is not None and high is not None:
            ax.errorbar(x, y, yerr=[[y - low], [high - y]], color=style["color"], capsize=3)
        ax.annotate(record.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    line = sorted(point for r, point in zip(shown, points, strict=True) if r.name in front)
    if line:
        ax.step(
            *zip(*line, strict=True),
            where="post",
            color="tab:orange",
            label="Pareto front",
            zorder=2,
        )
        ax.legend(loc="upper right")
    ax.set(xlabel=label, ylabel="end-to-end latency p50 (s)", title="Latency vs peak memory")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def plot_stages(records: Sequence[TrialRecord], path: Path) -> Path:
    from matplotlib.figure import Figure

    shown = [r for r in records if r.ok]
    fig = Figure(figsize=(max(6.0, 1.1 * len(shown) + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    bottom = [0.0] * len(shown)
    for stage in STAGES:
        heights = [r.metric(f"stage_{stage}") or 0.0 for r in shown]
        ax.bar(range(len(shown)), heights, bottom=bottom, label=stage.removesuffix("_s"))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(range(len(shown)), [r.name for r in shown], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="median seconds per request", title="Per-stage latency per trial")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    return path
