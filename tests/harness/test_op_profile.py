"""profile-ops: the top ops by self time, per generated frame, of one warmed-up synthesis."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.profile import EngineProfile
from harness.bench.op_profile import profile_ops, to_markdown
from harness.cli import main

MATMULS = ("aten::mm", "aten::addmm", "aten::linear", "aten::bmm")


def test_default_profile_ranks_ops_by_self_time_per_frame(tiny_checkpoint: Path) -> None:
    result = profile_ops(str(tiny_checkpoint), EngineProfile(), frames=4, top=5)
    meta, rows = result["meta"], result["rows"]
    assert meta["frames"] == 4
    assert meta["time_basis"] == "cpu"
    assert meta["total_self_ms_per_frame"] > 0 and meta["wall_ms_per_frame"] > 0
    assert len(rows) == 5
    times = [row["self_ms_per_frame"] for row in rows]
    assert times == sorted(times, reverse=True)
    assert all(0 < row["share_pct"] <= 100 for row in rows)
    assert sum(row["share_pct"] for row in rows) <= 100 + 1e-6
    assert all(row["calls_per_frame"] > 0 for row in rows)
    assert not any(row["op"].startswith("ProfilerStep") for row in rows)
    assert sum(row["self_ms_per_frame"] for row in rows) <= meta["total_self_ms_per_frame"] * (
        1 + 1e-9
    )
    table = to_markdown(result)
    assert "| op | calls/frame |" in table and rows[0]["op"] in table


def test_every_op_is_listed_and_matmuls_are_among_them(tiny_checkpoint: Path) -> None:
    result = profile_ops(str(tiny_checkpoint), EngineProfile(), frames=4, top=10_000)
    rows = result["rows"]
    assert len(rows) == result["meta"]["ops"]
    assert sum(row["share_pct"] for row in rows) == pytest.approx(100)
    assert any(row["op"] in MATMULS for row in rows), [row["op"] for row in rows]


def test_cli_prints_a_markdown_table_and_writes_a_report(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "profile-ops",
            "--checkpoint",
            str(tiny_checkpoint),
            "--frames",
            "4",
            "--top",
            "5",
            "-o",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| op | calls/frame |") and table[1].startswith("|---|")
    assert len(table) == 2 + 5
    assert "ms/frame" in out
    (report,) = tmp_path.glob("cpu-*.md")
    assert report.with_suffix(".json").is_file()


def test_cli_rejects_profile_flags_with_upstream(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["profile-ops", "--checkpoint", str(tiny_checkpoint), "--upstream", "--precision", "bf16"]
    )
    assert code == 2
    assert "--upstream" in capsys.readouterr().err
