"""Turn a trial's per-repeat synthesis reports into the figures a sweep compares.

Percentiles for latency (tail behaviour matters to a listener), medians for rates, maxima for
memory (the budget must hold at the worst moment). Figures the machine cannot measure (VRAM and
NVML on CPU) stay absent rather than becoming zeros. Throughput (aggregate audio per second, the
worst request's RTF, first audio under concurrency) comes from a batching trial's concurrent
rounds, or from the streamed repeats of one that decodes a request at a time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from engine.telemetry import summarize
from harness.trial.repeats import MedianInterval, coefficient_of_variation

STAGES = ("encode_s", "prefill_s", "decode_s", "codec_s")
# The figures a trial is judged and shown by: the exported profile's provenance, the parent run's
# trial table and the MLflow runs view all list these, in this order.
HEADLINE_METRICS = (
    "latency_p50_s",
    "latency_p50_ci_pct",
    "latency_cv",
    "latency_p95_s",
    "ttfa_p50_s",
    "frames_per_s",
    "rtf",
    "stream_rtf",
    "peak_reserved_mb",
    "host_rss_mb",
    "compile_s",
    "aggregate_audio_s_per_s",
    "per_request_rtf_max",
    "concurrent_ttfa_p95_s",
)


def _values(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(run[key]) for run in runs if run.get(key) is not None]


# How each per-run figure is summed up over the repeats: a summary statistic of
# ``engine.telemetry.summarize`` (the one rule every report uses).
_REDUCED = {
    "frames_per_s": "p50",
    "rtf": "p50",
    "stream_rtf": "p50",
    "prefill_ms_per_frame": "p50",
    "decode_ms_per_frame": "p50",
    "codec_ms_per_frame": "p50",
    "stream_codec_ms_per_frame": "p50",
    "audio_s": "p50",
    "j_per_audio_s": "p50",
    "gpu_util_pct": "mean",
    "peak_allocated_mb": "max",
    "peak_reserved_mb": "max",
    "nvml_process_mb": "max",
    "host_rss_mb": "max",
}


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Latency p50/p95/max, time to first audio, stage medians, rates and peak memory of the
    repeats; a figure no repeat measured is None."""
    summaries = {key: summarize(_values(runs, key)) for key in ("total_s", "ttfa_s")}
    summary: dict[str, float | None] = {}
    for key, name in (("total_s", "latency"), ("ttfa_s", "ttfa")):
        for stat in ("p50", "p95", "max"):
            summary[f"{name}_{stat}_s"] = summaries[key].get(stat)
    summary["stream_total_p50_s"] = summarize(_values(runs, "stream_total_s")).get("p50")
    for stage in STAGES:
        summary[f"stage_{stage}"] = summarize(_values(runs, stage)).get("p50")
    for key, stat in _REDUCED.items():
        summary[key] = summarize(_values(runs, key)).get(stat)
    return summary


def interval_metrics(
    interval: MedianInterval | None, runs: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """The p50 latency's 95 % interval (absent below six repeats), its CV and the repeat count."""
    figures = {"repeats": float(len(runs))}
    cv = coefficient_of_variation(_values(runs, "total_s"))
    if cv is not None:
        figures["latency_cv"] = cv
    if interval is not None:
        figures.update(
            {
                "latency_p50_s_ci_low": interval.low,
                "latency_p50_s_ci_high": interval.high,
                "latency_p50_ci_pct": interval.half_width_pct,
            }
        )
    return figures


def roofline(
    frames_per_s: float | None, bytes_per_frame: int, bandwidth_gb_s: float | None
) -> dict[str, float]:
    """Achieved memory traffic and its share of the bandwidth ceiling (gpt-fast style).

    ``bytes_per_frame`` comes from ``engine.measure.perf_model`` (weights, heads and K/V at the
    length attended); the percentage says how far launch and host overhead keep us from the roof.
    """
    if not frames_per_s or bytes_per_frame <= 0:
        return {}
    figures = {
        "gb_per_frame": bytes_per_frame / 1e9,
        "achieved_gb_s": frames_per_s * bytes_per_frame / 1e9,
    }
    if bandwidth_gb_s:
        figures["roofline_frames_per_s"] = bandwidth_gb_s * 1e9 / bytes_per_frame
        figures["roofline_pct"] = 100.0 * figures["achieved_gb_s"] / bandwidth_gb_s
    return figures


def single_stream_throughput(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The throughput figures at concurrency 1, from the streamed requests of the timed repeats
    (one at a time), so that a trial that decodes one request at a time, the baseline included,
    compares on throughput with one that ran concurrent rounds (``concurrent_throughput``)."""
    streamed = [
        (float(run["stream_total_s"]), float(run["audio_s"]), float(run["frames"]))
        for run in runs
        if run.get("stream_total_s") and run.get("audio_s")
    ]
    if not streamed:
        return {}
    ttfa = summarize(_values(runs, "ttfa_s"))
    frame_rates = [frames / wall for wall, _, frames in streamed]
    return {
        "concurrency": 1.0,
        "aggregate_audio_s_per_s": summarize([audio / wall for wall, audio, _ in streamed])["p50"],
        "aggregate_frames_per_s": summarize(frame_rates)["p50"],
        "per_request_frames_per_s": statistics.fmean(frame_rates),
        "per_request_rtf_max": max(wall / audio for wall, audio, _ in streamed),
        "concurrent_ttfa_p50_s": ttfa.get("p50"),
        "concurrent_ttfa_p95_s": ttfa.get("p95"),
    }


def _round_audio_s_per_s(requests: Sequence[dict[str, Any]]) -> float:
    """One round's audio seconds, all requests together, per second of the round's wall time
    (from the first release to the last request's last audio)."""
    wall = max(r["end_s"] for r in requests) - min(r["start_s"] for r in requests)
    return sum(r["report"]["audio_s"] for r in requests) / wall


def concurrent_throughput(row: dict[str, Any]) -> dict[str, float | None]:
    """The throughput figures of concurrent rounds: ``row`` is the bench's
    ``harness.bench.concurrency.concurrency_row`` of the rounds, with every timed request under
    ``requests`` (medians over rounds for the aggregates; every request of every round for the
    per-request figures and first audio)."""
    requests, size = row["requests"], int(row["concurrency"])
    rounds = [requests[i : i + size] for i in range(0, len(requests), size)]
    audio = summarize([_round_audio_s_per_s(r) for r in rounds])
    return {
        "concurrency": float(row["concurrency"]),
        "concurrent_rounds": float(row["rounds"]),
        "concurrent_untimed_round_s": row["untimed_round_s"],
        "aggregate_audio_s_per_s": audio["p50"],
        "aggregate_frames_per_s": row["aggregate_frames_per_s"],
        "aggregate_frames_per_s_spread": row["aggregate_frames_per_s_spread"],
        "aggregate_decode_frames_per_s": row["aggregate_decode_frames_per_s"],
        "per_request_frames_per_s": row["per_request_frames_per_s"],
        "per_request_rtf_max": row["per_request_rtf_max"],
        "concurrent_ttfa_p50_s": row["ttfa_p50_s"],
        "concurrent_ttfa_p95_s": row["ttfa_p95_s"],
        "queue_s": row["queue_s"],
        "batch_occupancy": row["batch_occupancy"],
    }
