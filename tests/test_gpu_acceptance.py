"""The one-call GPU acceptance script: its dry mode runs every step on the CPU and writes the same
report files a GPU run writes; without a GPU the real mode refuses with one line (exit 2); a
missing package is named on the first line (exit 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import gpu_acceptance
from harness.gpu_acceptance import (
    BENCH_ROWS,
    PRECISIONS,
    STEPS,
    bench_rows,
    missing_modules,
    slug,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-acceptance.sh"


@pytest.mark.slow
def test_dry_run_wires_every_step_into_the_report(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out-dir", str(tmp_path)]
        + ["--checkpoint", str(tiny_checkpoint)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        f"cpu-acceptance{part}{suffix}"
        for part in ("", "-bench", "-fidelity")
        for suffix in (".md", ".json")
    } | {"cpu-acceptance.log"}
    data = json.loads((tmp_path / "cpu-acceptance.json").read_text())
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == [name for name, _ in STEPS]
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(steps, "ok")
    context = data["context"]
    assert {(r["precision"], r["backend"]) for r in context["sdpa"]} == {
        (p, "flash (CPU)") for p in PRECISIONS
    }
    assert [r["profile"] for r in context["fidelity"]["rows"]] == ["bf16", "bf16-int8"]
    bench = context["bench"]["rows"]
    assert [r["row"] for r in bench] == ["upstream-eager", "ours-int8"]
    assert all("cudagraph_skip_reasons" in r for r in bench)
    ttfa = context["ttfa"]
    assert all(r["reference_cache_hit"] for r in ttfa["requests"])  # the saved voice's codes
    assert ttfa["first_request_ttfa_ms"] > 0
    report = (tmp_path / "cpu-acceptance.md").read_text()
    assert report.startswith("# GPU acceptance: cpu\n\nDRY RUN on the CPU")
    for heading in ("## SDPA kernel", "## Fidelity", "## Bench", "## Time to first audio"):
        assert heading in report
    assert "step ttfa ok" in (tmp_path / "cpu-acceptance.log").read_text()


def test_real_mode_without_a_gpu_refuses_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gpu_acceptance.main(["--out-dir", str(tmp_path)]) == gpu_acceptance.EXIT_REFUSED
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("gpu-acceptance: error: device: cuda was asked for")
    assert not any(tmp_path.iterdir())


def test_a_missing_package_is_named_on_the_first_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert missing_modules(("json", "no_such_module_here")) == ["no_such_module_here"]
    monkeypatch.setattr(gpu_acceptance, "REQUIRED_MODULES", ("torch", "fish_speech_missing"))
    assert gpu_acceptance.main(["--dry-run"]) == gpu_acceptance.EXIT_MISSING
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("gpu-acceptance: missing Python packages for fish_speech_missing:")


def test_the_gpu_run_benches_upstream_against_our_reduce_overhead_rows() -> None:
    rows = {row.name: row for row in bench_rows(dry_run=False)}
    assert list(rows) == list(BENCH_ROWS)
    assert rows["upstream-compile"].options == {"compile": True}
    for name in ("ours-bf16-compiled", "ours-int8", "ours-int4"):
        assert rows[name].options["compile_decode"] == "reduce-overhead"
        assert rows[name].options["precision"] == "bf16"


def test_report_names_follow_the_gpu() -> None:
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("NVIDIA GeForce RTX 4060 Laptop GPU") == "nvidia-geforce-rtx-4060-laptop-gpu"


def test_cudagraph_skip_reasons_are_collected_as_inductor_logs_them() -> None:
    from torch._inductor.cudagraph_utils import cudagraphs_log, log_cudagraph_skip_and_bump_counter

    from harness.bench import CudagraphSkipReasons

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
