"""``fishbench bench --concurrency``: its arguments, the row it builds from per-request reports,
the threads that release requests together, and one real run on the tiny checkpoint."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.telemetry import SynthesisReport, summarize
from harness.bench.concurrency import (
    CONCURRENT_TEXTS,
    concurrency_requests,
    concurrency_row,
    concurrency_rows,
    engine_rows,
    series_knobs,
    stream_round,
)
from harness.bench.rows import CPU_ROWS, GPU_ROWS
from harness.cli import build_parser


def _bench_args(*extra: str):
    return build_parser().parse_args(["bench", "--checkpoint", "ck", *extra])


def test_concurrency_is_a_list_of_ints_and_unset_by_default() -> None:
    assert _bench_args("--concurrency", "1", "2", "4", "8").concurrency == [1, 2, 4, 8]
    assert _bench_args().concurrency is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "concurrency must be 1 to 8 (the engine's max_batch limit), got 0"),
        ("9", "concurrency must be 1 to 8 (the engine's max_batch limit), got 9"),
        ("two", "expected an integer, got 'two'"),
    ],
)
def test_concurrency_out_of_range_is_refused_with_the_reason(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _bench_args("--concurrency", "1", value)
    assert exit_.value.code == 2
    assert f"argument --concurrency: {message}" in capsys.readouterr().err


def _request(start: float, first: float, end: float, report: dict[str, Any]) -> dict[str, Any]:
    full = SynthesisReport(frames=16, audio_s=2.0).as_dict() | report
    return {"start_s": start, "first_audio_s": first, "end_s": end, "report": full}


def _round(*requests: dict[str, Any]) -> dict[str, Any]:
    return {"requests": list(requests)}


def test_the_row_is_built_from_per_request_reports() -> None:
    stages = {"prefill_s": 0.1, "decode_s": 0.5}
    one = [
        _round(_request(0.0, 0.2, 1.0, stages)),
        _round(_request(0.0, 0.3, 2.0, stages | {"decode_s": 1.4})),
    ]
    two = [
        _round(
            _request(0.0, 0.25, 1.0, stages | {"queue_s": 0.0, "batch_occupancy": 2.0}),
            _request(0.1, 0.45, 1.6, stages | {"queue_s": 0.2, "batch_occupancy": 1.5}),
        )
    ]
    rows = concurrency_rows("ours-fp32", {2: two, 1: one})
    single, double = rows
    assert [r["concurrency"] for r in rows] == [1, 2]
    # c=1: rounds of 16 frames in 1.0 s and 2.0 s: 16 and 8 frames/s, median 12.
    assert single["aggregate_frames_per_s_rounds"] == [16.0, 8.0]
    assert single["aggregate_frames_per_s"] == pytest.approx(12.0)
    assert single["aggregate_frames_per_s_spread"] == pytest.approx(8.0 / 12.0)
    assert single["aggregate_decode_frames_per_s_rounds"] == pytest.approx([16 / 0.6, 16 / 1.5])
    # c=2: 32 frames; the last audio at 1.6 s; the last frame at 0.1 + 0.2 + 0.1 + 0.5 = 0.9 s.
    assert double["aggregate_frames_per_s"] == pytest.approx(32 / 1.6)
    assert double["aggregate_decode_frames_per_s"] == pytest.approx(32 / 0.9)
    assert double["ratio_to_concurrency_1"] == pytest.approx(
        {
            "aggregate_frames_per_s": (32 / 1.6) / 12.0,
            "aggregate_decode_frames_per_s": (32 / 0.9) / single["aggregate_decode_frames_per_s"],
        }
    )
    assert single["ratio_to_concurrency_1"] == {
        "aggregate_frames_per_s": 1.0,
        "aggregate_decode_frames_per_s": 1.0,
    }
    # Per request: own wall times 1.0 and 1.5 s, 16 frames and 2 s of audio each.
    assert double["per_request_frames_per_s_each"] == pytest.approx([16.0, 16 / 1.5])
    assert double["per_request_frames_per_s"] == pytest.approx((16.0 + 16 / 1.5) / 2)
    assert double["per_request_rtf"] == pytest.approx([0.5, 0.75])
    assert double["per_request_rtf_max"] == pytest.approx(0.75)
    ttfa = summarize([0.25, 0.35])
    assert double["ttfa_s"] == pytest.approx([0.25, 0.35])
    assert (double["ttfa_p50_s"], double["ttfa_p95_s"]) == pytest.approx((ttfa["p50"], ttfa["p95"]))
    assert double["queue_s"] == pytest.approx(0.1)
    assert double["batch_occupancy"] == pytest.approx(1.75)
    assert double["frames_per_request"] == 16 and double["rounds"] == 1


def test_without_concurrency_1_there_is_no_ratio() -> None:
    rounds = [_round(*(_request(0.0, 0.1, 1.0, {"decode_s": 0.5}) for _ in range(4)))]
    (row,) = concurrency_rows("ours-fp32", {4: rounds})
    assert row["ratio_to_concurrency_1"] == {
        "aggregate_frames_per_s": None,
        "aggregate_decode_frames_per_s": None,
    }


def test_a_round_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 2 requests"):
        concurrency_row(2, [_round(_request(0.0, 0.1, 1.0, {}))])


def test_every_request_of_a_round_has_its_own_text_and_a_seed_no_round_repeats() -> None:
    rounds = [concurrency_requests(8, r, 64, "ref.wav", "words") for r in range(3)]
    assert [q["text"] for q in rounds[0]] == list(CONCURRENT_TEXTS)
    seeds = [q["seed"] for requests in rounds for q in requests]
    assert len(set(seeds)) == len(seeds)
    assert {(q["fixed_frames"], q["max_new_tokens"]) for q in rounds[1]} == {(64, 64)}


def test_max_batch_is_raised_to_hold_the_largest_concurrency() -> None:
    assert series_knobs({"precision": "fp32"}, [1, 4]) == ({"precision": "fp32", "max_batch": 4}, 1)
    assert series_knobs({"max_batch": 8}, [1, 4]) == ({"max_batch": 8}, 8)


def test_concurrency_runs_engine_rows_only() -> None:
    from engine.errors import ConfigError

    assert [r.name for r in engine_rows(CPU_ROWS, None)] == ["ours-fp32"]
    assert [r.name for r in engine_rows(GPU_ROWS, None)] == ["ours-bf16-compiled"]
    assert [r.name for r in engine_rows(CPU_ROWS, ["ours-int8-compiled"])] == ["ours-int8-compiled"]
    with pytest.raises(ConfigError, match="upstream decodes one request at a time: upstream"):
        engine_rows(CPU_ROWS, ["upstream-eager"])
    with pytest.raises(ConfigError, match="unknown: nope"):
        engine_rows(CPU_ROWS, ["nope"])


class _ThreadedEngine:
    """Stands in for a batching engine: a per-thread ``last_report``, and a stream that waits
    until every request has started (so the threads must run together)."""

    def __init__(self, requests: int, fail: int | None = None) -> None:
        self._local = threading.local()
        self.started = threading.Barrier(requests, timeout=10)
        self.fail = fail

    @property
    def last_report(self) -> SynthesisReport:
        return self._local.report

    def synthesize_stream(self, text: str, **options: Any):
        self.started.wait()
        if options["seed"] == self.fail:
            raise RuntimeError("engine failed")
        yield np.zeros(100, np.float32)
        yield np.zeros(50, np.float32)
        frames = options["fixed_frames"]
        self._local.report = SynthesisReport(frames=frames, audio_s=150 / 44100, queue_s=0.01)


def test_a_round_runs_its_requests_together_and_reads_each_threads_report() -> None:
    requests = concurrency_requests(3, 0, 16, None, "")
    result = stream_round(_ThreadedEngine(3), requests)
    got = result["requests"]
    assert [r["index"] for r in got] == [0, 1, 2] and [r["samples"] for r in got] == [150] * 3
    assert min(r["start_s"] for r in got) == 0.0
    assert all(r["start_s"] <= r["first_audio_s"] <= r["end_s"] for r in got)
    assert {r["report"]["frames"] for r in got} == {16}


def test_a_failing_request_fails_the_round() -> None:
    requests = concurrency_requests(2, 0, 16, None, "")
    with pytest.raises(RuntimeError, match="engine failed"):
        stream_round(_ThreadedEngine(2, fail=1), requests)


def test_bench_concurrency_on_the_tiny_checkpoint_writes_the_rows(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from harness.cli import main

    argv = ["bench", "--checkpoint", str(tiny_checkpoint), "--concurrency", "1", "2"]
    assert main([*argv, "--frames", "16", "--repeats", "1", "--out-dir", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("cpu-*-concurrency-*.json")).read_text())
    rows = report["rows"]
    assert [(r["row"], r["concurrency"]) for r in rows] == [("ours-fp32", 1), ("ours-fp32", 2)]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["max_batch"] == 2 and r["max_batch_asked"] == 1 and r["notes"]
        assert r["aggregate_frames_per_s"] > 0 and r["aggregate_decode_frames_per_s"] > 0
        assert len(r["per_request_rtf"]) == len(r["ttfa_s"]) == r["concurrency"]
        assert {q["report"]["frames"] for q in r["requests"]} == {16}
        assert r["graphs_compiled_in_timed_rounds"] == 0
    assert rows[0]["ratio_to_concurrency_1"]["aggregate_frames_per_s"] == 1.0
    assert rows[1]["ratio_to_concurrency_1"]["aggregate_frames_per_s"] > 0
    assert report["meta"]["concurrency"] == [1, 2]
    assert "| ours-fp32 | 2 | 2 (raised) |" in next(tmp_path.glob("cpu-*.md")).read_text()
