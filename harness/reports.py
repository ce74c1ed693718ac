"""One way to write a report: a Markdown page for people and a JSON file beside it for programs,
named ``<stem>.md`` / ``<stem>.json`` under a folder of ``reports/``; and one Markdown table.

The bench, the fidelity spread, the op profile, the GPU check and ``fishbench compare`` write
through ``write_report``; every table in them and in a sweep's ``report.md`` is ``markdown_table``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORTS_DIR = Path("reports")
BENCH_DIR = REPORTS_DIR / "bench"
FIDELITY_DIR = REPORTS_DIR / "fidelity"
PROFILE_OPS_DIR = REPORTS_DIR / "profile-ops"
COMPARE_DIR = REPORTS_DIR / "compare"


def stamp() -> str:
    """The time part of a report's name: ``20261207-061500``."""
    return time.strftime("%Y%m%d-%H%M%S")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines; a ``|`` inside a cell is written as ``/`` (it would split it)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)]


def write_report(out_dir: Path, stem: str, markdown: str, data: dict[str, Any]) -> Path:
    """``<out_dir>/<stem>.md`` and ``.json``; returns the Markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.md"
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    path.write_text(markdown)
    return path
