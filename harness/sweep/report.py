"""The sweep's human-readable outputs: the final console table and ``report.md`` with its plots.

Both render the same rows, so the terminal and the report never disagree. Every speed figure is
shown next to its ratio to the baseline (SPEC: speed is always reported relative to upstream).
A second table shows throughput: each trial's concurrent rounds (``max_batch`` requests at once)
or, for one that decodes one request at a time, its streamed repeats (concurrency 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from engine.telemetry import figure
from harness.reports import markdown_table
from harness.sweep.plots import memory_axis, plot_latency_vs_memory, plot_stages
from harness.sweep.selection import Selection
from harness.trial.record import FAILED, SKIPPED, TrialRecord

COLUMNS = (
    "trial",
    "status",
    "p50 s (95% CI)",
    "p95 s",
    "CV",
    "n",
    "TTFA s",
    "frames/s",
    "RTF",
    "memory MB",
    "compile s",
    "speed-up",
    "WER",
    "gates",
)
THROUGHPUT_COLUMNS = (
    "trial",
    "concurrency",
    "audio s/s",
    "vs baseline",
    "frames/s",
    "per-request frames/s",
    "worst RTF",
    "TTFA p50 s",
    "TTFA p95 s",
    "queue s",
    "occupancy",
    "gates",
)
ERROR_LINES = 15


@dataclass(frozen=True)
class SweepContext:
    """What the report says about where and on what the sweep ran."""

    sweep_id: str
    checkpoint: str
    checkpoint_hash: str
    synthetic: bool
    hardware: str
    device_name: str
    torch_version: str
    grid: str
    scenario: str
    objective: str  # which objective chose the winner, in words
    wer_note: str | None
    profile_path: Path | None
    machine: list[str]  # the machine's state around the sweep (``harness.sweep.machine``)
    search: list[str]  # how candidates were found, and the Pareto front
    front: list[str]  # names of the trials on the Pareto front, for the plot
    not_run: list[str]  # trials the time budget left out
    budget_minutes: float | None
    timing: list[str] = field(default_factory=list)  # the estimate up front, and what it took
    screening: list[str] = field(default_factory=list)  # the screening stage, when there was one
    rerun: str | None = None  # the command that runs what the budget left out


def p50_text(metrics: dict[str, float | None]) -> str:
    """The p50 latency with its 95 % interval's half width, where enough repeats gave one."""
    p50, width = metrics.get("latency_p50_s"), metrics.get("latency_p50_ci_pct")
    return figure(p50) + ("" if width is None else f" ±{width:.1f}%")


def speedup(trial: TrialRecord, baseline: TrialRecord | None) -> float | None:
    """Baseline p50 latency over the trial's: > 1 means faster than upstream."""
    if baseline is None or not baseline.ok or not trial.ok:
        return None
    base, mine = baseline.metric("latency_p50_s"), trial.metric("latency_p50_s")
    return base / mine if base and mine else None


def _gates(record: TrialRecord, selection: Selection) -> str:
    if record.is_baseline:
        text = "reference"
    elif not record.ok:
        text = "n/a"
    else:
        text = "fail" if selection.failures.get(record.name) else "pass"
    return text + (" ★ champion" if selection.winner is record else "")


def table_rows(records: Sequence[TrialRecord], selection: Selection) -> list[list[str]]:
    baseline = next((r for r in records if r.is_baseline), None)
    rows = []
    for r in records:
        ratio = speedup(r, baseline)
        gates = _gates(r, selection)
        rows.append(
            [
                r.name,
                r.status + (" NOISY" if r.noisy else ""),
                p50_text(r.metrics),
                figure(r.metric("latency_p95_s")),
                figure(r.metric("latency_cv"), ".1%"),
                figure(r.metric("repeats")),
                figure(r.metric("ttfa_p50_s")),
                figure(r.metric("frames_per_s")),
                figure(r.metric("rtf")),
                figure(r.memory_mb, ".0f"),
                figure(r.metric("compile_s")),
                figure(ratio, ".2f", "x"),
                figure(r.wer),
                gates,
            ]
        )
    return rows


def throughput_rows(records: Sequence[TrialRecord], selection: Selection) -> list[list[str]]:
    """One row per trial that measured throughput, its aggregate audio as a ratio to the
    baseline's (one request at a time) beside it."""
    baseline = next((r for r in records if r.is_baseline and r.ok), None)
    base = baseline.metric("aggregate_audio_s_per_s") if baseline else None
    rows = []
    for r in records:
        audio = r.metric("aggregate_audio_s_per_s")
        if audio is None:
            continue
        rows.append(
            [
                r.name,
                figure(r.metric("concurrency"), ".0f"),
                figure(audio),
                figure(audio / base if base else None, ".2f", "x"),
                figure(r.metric("aggregate_frames_per_s")),
                figure(r.metric("per_request_frames_per_s")),
                figure(r.metric("per_request_rtf_max")),
                figure(r.metric("concurrent_ttfa_p50_s")),
                figure(r.metric("concurrent_ttfa_p95_s")),
                figure(r.metric("queue_s")),
                figure(r.metric("batch_occupancy")),
                _gates(r, selection),
            ]
        )
    return rows


SCREEN_COLUMNS = ("screened candidate", "status", "p50 s", "range s", "n", "compile s", "verdict")


def _compile_kind(record: TrialRecord) -> str:
    misses = record.metric("fxgraph_cache_miss")
    if misses is None:
        return ""
    return " (cold)" if misses else " (warm)"


def screening_lines(
    screens: Sequence[TrialRecord], verdicts: Mapping[str, Any], intro: str
) -> list[str]:
    """The report's screening section: each screen's timing and whether it was confirmed, why."""
    if not screens:
        return []
    rows = []
    for r in screens:
        totals = [run["total_s"] for run in r.runs if run.get("total_s") is not None]
        verdict = verdicts.get(r.name)
        rows.append(
            [
                r.name,
                r.status + (" NOISY" if r.noisy else ""),
                figure(r.metric("latency_p50_s")),
                f"{min(totals):.3g}-{max(totals):.3g}" if totals else "",
                figure(r.metric("repeats")),
                figure(r.metric("compile_s")) + _compile_kind(r),
                ("confirmed: " if verdict.confirm else "not confirmed: ") + verdict.why
                if verdict is not None
                else "not judged (screening stopped by the budget)",
            ]
        )
    return ["", "## Screening", "", intro, "", *markdown_table(SCREEN_COLUMNS, rows)]


def console_table(
    records: Sequence[TrialRecord], selection: Selection, title: str, throughput: bool = False
) -> Table:
    """The trial table, or with ``throughput`` the throughput table (a throughput sweep's)."""
    table = Table(title=title, caption=selection.summary)
    columns, rows = (
        (THROUGHPUT_COLUMNS, throughput_rows(records, selection))
        if throughput
        else (COLUMNS, table_rows(records, selection))
    )
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("trial", "status", "gates") else "right"
        )
    for row in rows:
        table.add_row(*row)
    return table


def _details(records: Sequence[TrialRecord], selection: Selection) -> list[str]:
    lines = []
    failed = [r for r in records if r.status == FAILED]
    if failed:
        lines += ["", "## Failed trials", ""]
        for r in failed:
            tail = "\n".join((r.reason or "").strip().splitlines()[-ERROR_LINES:])
            lines += [f"### {r.name}", "", f"`{r.headline}`", "", "```text", tail, "```", ""]
    skipped = [r for r in records if r.status == SKIPPED]
    if skipped:
        lines += ["", "## Skipped on this hardware", ""]
        lines += [f"- **{r.name}**: {r.reason}" for r in skipped]
    noisy = [r for r in records if r.noisy]
    if noisy:
        lines += ["", "## NOISY trials (other processes disturbed the timings)", ""]
        lines += [
            f"- **{r.name}**: {r.noisy}"
            + (f" ({r.notes['isolation']})" if "isolation" in r.notes else "")
            for r in noisy
        ]
    gated = {name: reasons for name, reasons in selection.failures.items() if reasons}
    ran = {r.name for r in records if r.ok}
    if gated.keys() & ran:
        lines += ["", "## Candidates that did not pass the gates", ""]
        lines += [
            f"- **{name}**: " + "; ".join(reasons) for name, reasons in gated.items() if name in ran
        ]
    return lines


def write_report(
    folder: Path, records: Sequence[TrialRecord], selection: Selection, context: SweepContext
) -> Path:
    """``report.md`` with the trial table, failures with reasons and the two PNG plots."""
    winner = selection.winner.name if selection.winner else None
    plot_latency_vs_memory(records, folder / "latency_vs_memory.png", winner, context.front)
    plot_stages(records, folder / "stages.png")
    _, memory_label = memory_axis(records)
    lines = [
        f"# Sweep {context.sweep_id}",
        "",
        f"- checkpoint: `{context.checkpoint}` (hash `{context.checkpoint_hash}`, "
        + ("synthetic random weights" if context.synthetic else "real weights")
        + ")",
        f"- hardware preset: `{context.hardware}` on {context.device_name}, "
        f"torch {context.torch_version}",
        f"- grid: `{context.grid}`; scenario: {context.scenario}",
        f"- objective: {context.objective}",
        *context.machine,
        "- latency: `synthesize` end to end after warm-up (compile and warm-up are the compile "
        "column); TTFA: `synthesize_stream` to the first chunk (the baseline's first audio is its "
        "whole result). The engine keeps reference codes cached between requests; upstream "
        "re-encodes the reference every time, as it does by default",
        f"- memory column: {memory_label}",
        f"- WER: {context.wer_note or 'offline Whisper on each sample vs the scenario text'}",
        "",
        "## Result",
        "",
        selection.summary + ".",
    ]
    if selection.tie:
        lines += ["", f"Tie: {selection.tie}."]
    if context.profile_path is not None:
        lines += ["", f"Exported profile: `{context.profile_path}`."]
    if context.not_run:
        rerun = context.rerun or f"fishbench sweep resume={context.sweep_id} budget_minutes=inf"
        lines += [
            "",
            f"Budget of {context.budget_minutes:g} min reached; not run: "
            + ", ".join(context.not_run)
            + f". `{rerun}` runs them.",
        ]
    if context.timing:
        lines += ["", "## Time", "", *context.timing]
    lines += ["", "## Search", "", *context.search]
    lines += ["", "## Trials", "", *markdown_table(COLUMNS, table_rows(records, selection))]
    throughput = throughput_rows(records, selection)
    if throughput:
        lines += [
            "",
            "## Throughput",
            "",
            "A trial with `max_batch` > 1 streamed `max_batch` requests at once (its own text and "
            "seed each) after its repeats; the others' figures are their streamed repeats, one "
            "request at a time (concurrency 1). audio s/s: all requests' audio seconds over the "
            "round's wall time (median over rounds); worst RTF: the slowest request's wall time "
            "over its audio; TTFA: release to first audio as each caller saw it.",
            "",
            *markdown_table(THROUGHPUT_COLUMNS, throughput),
        ]
    lines += context.screening
    lines += _details(records, selection)
    lines += [
        "",
        "## Plots",
        "",
        "![latency vs memory](latency_vs_memory.png)",
        "",
        "![stages](stages.png)",
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
