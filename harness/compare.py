"""``fishbench compare``: every machine's champion against its own baseline, from one MLflow store.

A team logs sweeps from several desktops into one tracking server (``make mlflow-server``); this
reads it (or any store: the sqlite file works too) and writes ``reports/compare/<time>.md`` and a
PNG with one latency-vs-memory panel per hardware. Hardware is the ``hardware_id`` tag every run
carries (GPU name, or CPU model and cores); its champion is the run tagged ``champion`` there,
which a newer sweep on the same hardware takes over. Speed-ups are always against the baseline
of the champion's own sweep, never across machines.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from engine.errors import ConfigError
from engine.telemetry import MISSING, figure
from harness.reports import markdown_table, stamp, write_report
from harness.sweep.config import LOCAL_TRACKING_URI
from harness.sweep.report import p50_text
from harness.sweep.tracking import LOCAL_UI_URL, champions_url
from harness.trial.record import memory_figure

log = logging.getLogger(__name__)
MACHINE_TAGS = ("gpu_name", "vram_mb", "driver_version", "torch_version", "cuda_version")


@dataclass(frozen=True)
class HardwareResult:
    """One hardware's champion, the baseline and every trial of the champion's sweep."""

    hardware_id: str
    sweep: str  # the parent run's name, sweep-<id>
    champion: Run
    baseline: Run | None
    trials: list[Run]

    def metric(self, run: Run | None, key: str) -> float | None:
        return None if run is None else run.data.metrics.get(key)

    @property
    def speedup(self) -> float | None:
        base = self.metric(self.baseline, "latency_p50_s")
        mine = self.metric(self.champion, "latency_p50_s")
        return base / mine if base and mine else None


def memory_mb(run: Run | None) -> float | None:
    """The run's memory figure, as the sweep's table shows it."""
    return None if run is None else memory_figure(run.data.metrics)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_TRACKING_URI


def collect(client: MlflowClient, experiment: str) -> list[HardwareResult]:
    """Each hardware's champion with its sweep's trials, from the ``experiment`` in the store."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(
            f"no experiment {experiment!r} in {client.tracking_uri}: run a sweep first"
        )
    ids = [found.experiment_id]
    results = []
    for champion in client.search_runs(ids, "tags.champion = 'true'", max_results=1000):
        hardware_id = champion.data.tags.get("hardware_id")
        if hardware_id is None:
            log.info("skipping champion %s: logged before hardware tags", champion.info.run_id)
            continue
        parent = champion.data.tags["mlflow.parentRunId"]
        query = f"tags.`mlflow.parentRunId` = '{parent}'"
        trials = client.search_runs(ids, query, max_results=1000)
        baseline = next((t for t in trials if t.data.tags.get("trial_kind") == "baseline"), None)
        sweep = client.get_run(parent).info.run_name
        results.append(HardwareResult(hardware_id, sweep, champion, baseline, trials))
    return sorted(results, key=lambda r: r.hardware_id)


def _p50(run: Run | None) -> str:
    return MISSING if run is None else p50_text(run.data.metrics)


def _gates(result: HardwareResult) -> str:
    tags = result.champion.data.tags
    if tags.get("trial_kind") == "baseline":
        return "baseline kept: no candidate passed"
    noisy = " (NOISY, allowed)" if tags.get("noisy") == "true" else ""
    return tags.get("gates", "pass") + noisy


def ui_url(tracking_uri: str, experiment_id: str) -> str:
    """Where the MLflow UI shows the same runs: the server itself, or ``make mlflow-ui``."""
    if tracking_uri.startswith(("http://", "https://")):
        return champions_url(tracking_uri.rstrip("/"), experiment_id)
    return champions_url(LOCAL_UI_URL, experiment_id) + " (after `make mlflow-ui`)"


COLUMNS = (
    "hardware",
    "sweep",
    "baseline p50 s",
    "champion",
    "champion p50 s (95% CI)",
    "speed-up",
    "memory MB",
    "baseline memory MB",
    "gates",
)


def to_markdown(results: Sequence[HardwareResult], tracking_uri: str, plot: str, ui: str) -> str:
    lines = [
        "# Champions by hardware",
        "",
        f"- store: `{tracking_uri}`; {len(results)} hardware with a champion",
        f"- the same runs side by side in the MLflow UI: {ui}",
        "- speed-up: the champion's p50 latency against the baseline of its own sweep; memory: "
        "peak reserved VRAM, host RSS on CPU",
        "",
    ]
    rows = []
    for r in results:
        tags = r.champion.data.tags
        rows.append(
            [
                r.hardware_id,
                r.sweep,
                _p50(r.baseline),
                r.champion.info.run_name,
                _p50(r.champion),
                figure(r.speedup, ".2f", "x"),
                figure(memory_mb(r.champion), ".0f"),
                figure(memory_mb(r.baseline), ".0f"),
                _gates(r),
                *(tags.get(key, "n/a") for key in MACHINE_TAGS),
            ]
        )
    lines += markdown_table(COLUMNS + MACHINE_TAGS, rows)
    lines += ["", f"![latency vs memory per hardware]({plot})", ""]
    return "\n".join(lines)


def plot(results: Sequence[HardwareResult], path: Path) -> Path:
    """One panel per hardware: its sweep's measured trials, baseline square, champion star."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * max(len(results), 1), 5), layout="constrained")
    for i, r in enumerate(results, 1):
        ax = fig.add_subplot(1, len(results), i)
        for run in r.trials:
            x, y = memory_mb(run), run.data.metrics.get("latency_p50_s")
            if x is None or y is None:
                continue
            style = {"marker": "o", "color": "tab:blue"}
            if run.info.run_id == r.champion.info.run_id:
                style = {"marker": "*", "color": "tab:red", "s": 180}
            elif run.data.tags.get("trial_kind") == "baseline":
                style = {"marker": "s", "color": "tab:gray"}
            ax.scatter(x, y, zorder=3, **style)
            ax.annotate(
                run.info.run_name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7
            )
        ax.set(title=r.hardware_id, xlabel="peak memory (MB)", ylabel="latency p50 (s)")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def compare(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """Write the comparison report and its plot; returns the report's path."""
    client = MlflowClient(tracking_uri=tracking_uri)
    results = collect(client, experiment)
    if not results:
        raise ConfigError(f"no champion with hardware tags in {tracking_uri}: run a sweep first")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stamp()
    png = plot(results, out_dir / f"{name}.png")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    markdown = to_markdown(results, tracking_uri, png.name, ui_url(tracking_uri, experiment_id))
    data = {
        "tracking_uri": tracking_uri,
        "champions": [
            {"hardware_id": r.hardware_id, "sweep": r.sweep, "speedup": r.speedup} for r in results
        ],
    }
    return write_report(out_dir, name, markdown, data)


def run(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or default_tracking_uri()
    report = compare(uri, args.experiment, args.out_dir)
    print(f"wrote {report} and {report.with_suffix('.png')}")
    return 0
