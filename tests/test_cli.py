"""The fishbench command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from harness.cli import main


def _fishbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # two fishbench processes
def test_make_checkpoint_and_synth_write_a_44k_wav(tmp_path: Path) -> None:
    made = _fishbench("make-checkpoint", "--preset", "tiny", "--seed", "2", str(tmp_path / "ck"))
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "ck" / "SYNTHETIC.json").read_text())["seed"] == 2
    out = tmp_path / "out.wav"
    result = _fishbench(
        "synth",
        "--checkpoint",
        str(tmp_path / "ck"),
        "--text",
        "Hello.",
        "--fixed-frames",
        "5",
        "--seed",
        "1",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    info = sf.info(out)
    assert (info.samplerate, info.frames) == (44_100, 5 * 2048)


def test_synth_bad_input_exits_nonzero_with_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bogus = tmp_path / "bogus.wav"
    bogus.write_text("not audio")
    result = _fishbench(
        "synth",
        "--checkpoint",
        str(tiny_checkpoint),
        "--text",
        "Hi.",
        "--reference",
        str(bogus),
        "-o",
        str(tmp_path / "x.wav"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "fishbench synth: error: bogus.wav: not a readable audio file (InvalidDataError)"
    )
    missing = _fishbench(
        "synth",
        "--checkpoint",
        str(tmp_path / "none"),
        "--text",
        "Hi.",
        "-o",
        str(tmp_path / "y.wav"),
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr.splitlines()[-1]


def _synth_args(checkpoint: Path, tmp_path: Path) -> list[str]:
    return [
        "synth",
        "--checkpoint",
        str(checkpoint),
        "--text",
        "Hi.",
        "-o",
        str(tmp_path / "o.wav"),
    ]


def test_invalid_env_override_exits_2_with_one_line_naming_the_knob(
    tmp_path: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MAX_SEQ_LEN", "1001")
    assert main(_synth_args(tiny_checkpoint, tmp_path)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "fishbench synth: error: MAX_SEQ_LEN=1001: max_seq_len must be a multiple of 8 "
        "(the KV cache is allocated in blocks of 8), got 1001"
    ]
    monkeypatch.setenv("MAX_SEQ_LEN", "abc")
    assert main(_synth_args(tiny_checkpoint, tmp_path)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "fishbench synth: error: MAX_SEQ_LEN: expected an integer, got 'abc'"
    ]
    assert not (tmp_path / "o.wav").exists()


def test_invalid_profile_yaml_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for body, line in [
        ("int4_group_size: 48\n", "int4_group_size: Input should be 32, 64, 128 or 256"),
        ("chunk_sise: 8\n", "chunk_sise: Extra inputs are not permitted"),
        (
            "chunk_size: many\n",
            "chunk_size: Input should be a valid integer, unable to parse string as an integer",
        ),
    ]:
        profile = tmp_path / "profile.yaml"
        profile.write_text(body)
        args = _synth_args(tiny_checkpoint, tmp_path) + ["--profile", str(profile)]
        assert main(args) == 2
        assert capsys.readouterr().err.splitlines() == [f"fishbench synth: error: {line}"]


def test_bench_runs_on_cpu_and_writes_json_and_markdown(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    result = _fishbench(
        "bench",
        "--checkpoint",
        str(tiny_checkpoint),
        "--frames",
        "8",
        "--repeats",
        "2",
        "--rows",
        "upstream-eager",
        "ours-fp32",
        "--out-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(next(tmp_path.glob("cpu-*.json")).read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"upstream-eager", "ours-fp32"}
    assert rows["upstream-eager"]["speedup"] == 1.0
    assert rows["ours-fp32"]["frames_per_s"] > 0 and rows["ours-fp32"]["peak_reserved_mb"] is None
    assert "| ours-fp32 |" in next(tmp_path.glob("cpu-*.md")).read_text()


def test_a_failing_bench_row_is_reported_with_its_reason(tiny_checkpoint: Path) -> None:
    from harness.bench.rows import Row, reference_signal
    from harness.bench.run import run_row

    result = run_row(
        Row("broken", "engine", {"precision": "int3"}),
        str(tiny_checkpoint),
        2,
        1,
        reference_signal(1.0),
    )
    assert result["row"] == "broken"
    assert result["error"].splitlines()[0].startswith("ValidationError:")


def test_bandwidth_ceiling_comes_from_the_hardware_presets() -> None:
    from harness.bench.run import hardware_preset

    assert hardware_preset("NVIDIA H100 80GB HBM3")["bandwidth_gb_s"] == 3350
    assert hardware_preset("NVIDIA GeForce RTX 4060")["bandwidth_gb_s"] == 272
    assert hardware_preset("cpu")["bandwidth_gb_s"] is None
    assert hardware_preset("Some Other GPU")["bandwidth_gb_s"] is None


def test_bench_reads_fidelity_verdicts_of_the_same_checkpoint(tmp_path: Path) -> None:
    from harness.bench.report import fidelity_verdicts, verdict

    row = {"runs_as": "cpu bf16 int8", "passes_gates": False, "gate_failures": ["slow_kl=1"]}
    report = {"meta": {"checkpoint": "checkpoints/s1-mini-synthetic"}, "rows": [row]}
    (tmp_path / "cpu-20261123-000000.json").write_text(json.dumps(report))
    verdicts = fidelity_verdicts(tmp_path, "cpu", "elsewhere/s1-mini-synthetic")
    profile = {"precision": "bf16", "quantization": "int8"}
    assert verdict({"active_profile": profile}, "cpu", verdicts) == "fail (slow_kl=1)"
    assert verdict({"active_profile": profile | {"quantization": "int4"}}, "cpu", verdicts) == (
        "not measured"
    )
    assert fidelity_verdicts(tmp_path, "cpu", "checkpoints/tiny-synthetic") == {}


def test_fidelity_spread_prints_a_json_line_per_profile_and_writes_the_report(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    result = _fishbench(
        "fidelity",
        "--checkpoint",
        str(tiny_checkpoint),
        "--spread",
        "--frames",
        "8",
        "-o",
        str(tmp_path / "fidelity"),
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["profile"] for r in rows] == [
        "bf16",
        "bf16-int8",
        "bf16-int4",
        "bf16-nf4",
        "fp32-int8",
    ]
    assert [r["runs_as"] for r in rows][2:4] == ["cpu bf16 int4", "cpu bf16 nf4"]
    kl = {r["profile"]: r["slow_kl"] for r in rows}
    assert 0 < kl["bf16"] < kl["bf16-int8"] < min(kl["bf16-int4"], kl["bf16-nf4"])
    assert rows[0]["passes_gates"] and rows[-1]["passes_gates"]
    (report,) = (tmp_path / "fidelity").glob("cpu-*.md")
    assert report.read_text().count("| cpu ") == 5
    assert json.loads(report.with_suffix(".json").read_text())["rows"] == rows
