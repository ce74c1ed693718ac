"""The GPU check in parts: its dry run takes every part through the compiled rows on the CPU and
writes the same report files a GPU run writes; without a GPU the real run refuses with one line
(exit 2); a missing package is named on the first line (exit 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import preflight
from harness.gpu_check import cli
from harness.gpu_check.plan import PARTS, Plan
from harness.gpu_check.report import slug
from harness.gpu_check.steps import PRECISIONS, bench_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-acceptance.sh"


@pytest.mark.compiled
@pytest.mark.timeout(3000)  # five parts, inductor compiling on two cores
def test_dry_run_takes_every_part_through_the_compiled_rows(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out-dir", str(out)]
        + ["--checkpoint", str(tiny_checkpoint), "--cache-dir", str(tmp_path / "cache")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = {n: json.loads((out / f"cpu-check-part{n}.json").read_text()) for n in PARTS}
    for n, data in reports.items():
        steps = {s["name"]: s["status"] for s in data["steps"]}
        assert list(steps) == list(PARTS[n][1])
        expected = {name: "skipped" if name == "vram-budgets" else "ok" for name in steps}
        assert steps == expected, n
        assert (
            (out / f"cpu-check-part{n}.md")
            .read_text()
            .startswith(f"# GPU check, part {n} ({PARTS[n][0]}): cpu\n\nDRY RUN on the CPU")
        )
    context = {n: data["context"] for n, data in reports.items()}
    assert {(r["precision"], r["backend"]) for r in context[1]["sdpa"]} == {
        (p, "flash (CPU)") for p in PRECISIONS
    }
    int8 = context[1]["fidelity"]["rows"][1]
    assert (int8["profile"], int8["runs_as"]) == ("bf16-int8", "cpu bf16 int8")
    for n in (2, 3):
        rows = context[n]["bench"]["rows"]
        assert [r["row"] for r in rows] == list(PARTS[n][2])
        ours = [r for r in rows if r["row"].startswith("ours")]
        assert all(r["active_profile"]["compile_decode"] == "default" for r in ours)
        assert all(
            r["compile_counters"]["fxgraph_cache_miss"] + r["compile_counters"]["fxgraph_cache_hit"]
            > 0
            for r in ours
        )  # inductor compiled them
    ttfa = context[3]["ttfa"]
    assert all(r["reference_cache_hit"] for r in ttfa["requests"])  # the saved voice's codes
    assert context[4]["warmup"]["buckets"] == [256]
    assert context[4]["default_request"]["frames"] > 0
    assert "no device memory to cap" in reports[5]["steps"][-1]["summary"]


def test_real_mode_without_a_gpu_refuses_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever this host has: torch sees no GPU and no device node is listed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(preflight, "_device_nodes", lambda: [])
    assert cli.main(["--part", "1", "--out-dir", str(tmp_path)]) == cli.EXIT_REFUSED
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("gpu-check: error: device: cuda was asked for")
    assert not any(tmp_path.iterdir())


def test_a_missing_package_is_named_on_the_first_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.missing_modules(("json", "no_such_module_here")) == ["no_such_module_here"]
    monkeypatch.setattr(cli, "REQUIRED_MODULES", ("torch", "fish_speech_missing"))
    assert cli.main(["--dry-run"]) == cli.EXIT_MISSING
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("gpu-check: missing Python packages for fish_speech_missing:")


def test_every_module_the_steps_import_is_required() -> None:
    """torchao among them: the int4 row and the int8 fidelity quantize with it."""
    assert {"torchao", "torch", "fish_speech"} <= set(cli.REQUIRED_MODULES)


def test_parts_bench_upstream_against_our_reduce_overhead_rows(tmp_path: Path) -> None:
    plan = Plan.for_run(False, tmp_path, None, None, None)
    names = [name for _, _, rows, _ in PARTS.values() for name in rows]
    assert names.count("upstream-eager") == 3  # every bench part has its own speed-up reference
    rows = {row.name: row for row in bench_rows(plan, tuple(dict.fromkeys(names)))}
    assert rows["upstream-compile"].options == {"compile": True}
    for name in ("ours-bf16-compiled", "ours-int8", "ours-int4", "ours-bf16-mem-efficient"):
        assert rows[name].options["compile_decode"] == "reduce-overhead"
        assert rows[name].options["precision"] == "bf16"
    assert rows["ours-bf16-mem-efficient"].env == {"TORCH_CUDNN_SDPA_DEPRIORITIZED": "1"}
    dry = bench_rows(Plan.for_run(True, tmp_path, None, None, None), ("ours-int8",))[0]
    assert dry.options["compile_decode"] == "reduce-overhead"  # compiled in the dry run too
    assert dry.options["max_seq_len"] == 256


def test_report_names_follow_the_gpu() -> None:
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("NVIDIA GeForce RTX 4060 Laptop GPU") == "nvidia-geforce-rtx-4060-laptop-gpu"


def test_cudagraph_skip_reasons_are_collected_as_inductor_logs_them() -> None:
    from torch._inductor.cudagraph_utils import cudagraphs_log, log_cudagraph_skip_and_bump_counter

    from harness.bench.run import CudagraphSkipReasons

    reasons = CudagraphSkipReasons.attach()
    try:
        log_cudagraph_skip_and_bump_counter(
            "skipping cudagraphs due to mutated inputs (1 instance)"
        )
        log_cudagraph_skip_and_bump_counter(
            "skipping cudagraphs due to mutated inputs (1 instance)"
        )
    finally:
        cudagraphs_log.removeHandler(reasons)
    assert reasons.reasons == ["skipping cudagraphs due to mutated inputs (1 instance)"]
