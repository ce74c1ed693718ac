"""The bench report's stage table: where a frame's time goes, and whether a stream keeps up."""

from __future__ import annotations

import pytest

from harness.bench.report import _stage_table

pytestmark = pytest.mark.unit


def test_the_stage_table_sums_a_streamed_frame_and_shows_the_streamed_rtf() -> None:
    rows = [
        {
            "row": "ours",
            "prefill_ms_per_frame": 5.0,
            "decode_ms_per_frame": 30.0,
            "codec_ms_per_frame": 9.0,
            "stream_codec_ms_per_frame": 12.5,
            "stream_rtf": 0.93,
        },
        {"row": "upstream-eager", "prefill_ms_per_frame": 40.0, "decode_ms_per_frame": 900.0},
        {"row": "broken", "error": "boom"},
    ]
    lines = _stage_table(rows)
    assert "| ours | 5.0 | 30.0 | 9.0 | 12.5 | 47.5 | 0.93 |" in lines
    upstream = next(line for line in lines if line.startswith("| upstream-eager |"))
    assert upstream.count("n/a") == 4  # no stream: no streamed codec, sum or RTF
    assert not any("broken" in line for line in lines)
