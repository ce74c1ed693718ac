"""The soak (``make soak``): a few seconds of it against the shared server, and its verdict."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from serving.soak.__main__ import main
from serving.soak.load import LATE_S, Result, judge, run
from serving.soak.mix import Kind, error_body, sse_done
from serving.soak.report import Tick, format_tick, verdict
from serving.soak.server import server_env

TICK = re.compile(
    r"^min +[\d.]+  rss +[\d.]+ MB  requests +\d+ \[[\d: ]+\]  speech p50 .+ p95 .+  late \d+$"
)
MB = 2**20


def result(status: int | None, problem: str | None = None, **fields: object) -> Result:
    base = dict(kind="tts", bad=False, speech=True, finished_s=1.0, elapsed_s=0.5, late_s=0.0)
    return Result(**{**base, **fields}, status=status, problem=problem)


@pytest.mark.service
def test_short_soak_against_the_shared_server(
    server, client: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sum(client.get("/metrics").json()["requests"].values())
    argv = ["--url", server.url, "--pid", str(server.process.pid), "--minutes", "0.1"]
    code = main([*argv, "--report-every", "2", "--rate", "3"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, "\n".join(out)
    ticks = [line for line in out if line.startswith("min ")]
    assert len(ticks) >= 3 and all(TICK.match(line) for line in ticks), ticks
    assert out[0].startswith("soak: 0.1 min at 3 req/s") and out[-1] == "PASS"
    total = next(line for line in out if line.startswith("requests "))
    assert total.startswith("requests 18 ")  # open loop: 6 s x 3 req/s, whatever the latency
    assert next(line for line in out if line.startswith("rss after first interval")).endswith("%")
    assert sum(client.get("/metrics").json()["requests"].values()) > before
    voices = [voice["id"] for voice in client.get("/voices").json()["voices"]]
    assert not [v for v in voices if v.startswith("soak-")]  # the soak's own voice is gone


@pytest.mark.service
def test_a_start_behind_its_slot_is_counted_late(server) -> None:
    """One connection at 10 starts per second: the later starts wait, and say so."""
    health = Kind("health", "GET", "/health", 1)
    results: list[Result] = []

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await run(http, [health], 10, 1.0, 0, 1, results)

    asyncio.run(load())
    assert len(results) == 10 and all(r.status == 200 and r.problem is None for r in results)
    assert sum(r.late_s > 0 for r in results) >= 5


@pytest.mark.parametrize(
    ("rss", "fails"),
    [
        ([100 * MB, 105 * MB, 110 * MB], False),  # exactly 10 %: allowed
        ([100 * MB, 130 * MB, 111 * MB], True),  # the last sample decides, not the peak
        ([100 * MB, 120 * MB, 104 * MB], False),
        ([None, None, None], False),  # URL without a pid: no memory verdict
        ([100 * MB], False),  # one interval: nothing to compare
    ],
)
def test_rss_growth_verdict(rss: list[int | None], fails: bool) -> None:
    failures = verdict(rss, [result(200)])
    assert bool(failures) is fails
    assert not fails or failures[0].startswith("RSS grew 11.0% after the first interval")


def test_any_wrong_answer_fails_the_soak_but_busy_does_not() -> None:
    assert verdict([], [result(200), result(429), result(422, bad=True)]) == []
    failures = verdict(
        [], [result(500, "500 on tts"), result(None, "transport error on tts: ReadError")] * 2
    )
    assert failures == ["2 x 500 on tts", "2 x transport error on tts: ReadError"]


def response(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://x/"), **kwargs)


def test_judge_checks_status_and_body() -> None:
    good = Kind("sse", "POST", "/v1/audio/speech", 1, check=sse_done, speech=True)
    bad = Kind("bad-voice", "POST", "/v1/audio/speech", 1, check=error_body, bad=True)
    done = 'data: {"type": "speech.audio.delta"}\n\ndata: {"type": "speech.audio.done"}\n\n'
    assert judge(good, response(200, text=done)) is None
    assert judge(good, response(429)) is None
    assert judge(good, response(503)) == "503 on sse"
    failed = 'data: {"type": "error", "error": {}}\n\n'
    assert judge(good, response(200, text=failed)) == "stream ended with 'error'"
    assert judge(bad, response(200, json={})) == "200 on bad bad-voice"
    body = {"error": "not_found", "message": "no voice", "type": "voice"}
    assert judge(bad, response(404, json=body)) is None
    assert judge(bad, response(404, text="Not Found")) == "error body is not JSON"


def test_tick_line_without_a_pid() -> None:
    tick = Tick(1, 60.0, None, [result(200, late_s=LATE_S + 1), result(None, "x")])
    line = format_tick(tick)
    assert "rss        n/a" in line and "[200:1 error:1]" in line and line.endswith("late 1")


def test_own_server_needs_a_checkpoint(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--checkpoint", str(tmp_path / "missing"), "--minutes", "0.1"]) == 2
    assert "fishbench make-checkpoint --preset tiny" in capsys.readouterr().err


def test_own_server_ignores_the_callers_service_settings(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported API_KEY or QUEUE_SIZE would turn the soak into 401s or 429s."""
    monkeypatch.setenv("API_KEY", "secret")
    monkeypatch.setenv("queue_size", "1")
    env = server_env(tmp_path, tmp_path, 16, 8)
    assert "API_KEY" not in env and "queue_size" not in env
    assert env["QUEUE_SIZE"] == "8" and env["MAX_NEW_TOKENS"] == "16"
    assert env["MODEL_DIR"] == str(tmp_path.resolve()) and "PATH" in env
