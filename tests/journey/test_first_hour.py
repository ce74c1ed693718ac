"""A newcomer's first hour, from a fresh clone with no weights: sweep, serve, listen, look.

Runs the README's "Your first ten minutes" commands in a clone of the committed repository (so
nothing of the developer's checkout leaks in), each as the Makefile runs it, and prints how long
each step took. The sweep is cut to the baseline and one candidate, six timed repeats of 16 frames
each, with Hydra overrides.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from ports import free_port

pytestmark = [pytest.mark.journey, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# The baseline and the engine default, each timed on 16 frames six times.
SWEEP_OVERRIDE = (
    "'grid.points=[{}]' scenario.fixed_frames=16 scenario.max_repeats=6 scenario.fidelity_frames=8"
)
# Variables of the developer's (or CI's) shell that would change what the clone does; a newcomer's
# Python caches bytecode as it imports, so `make setup` skips compiling all of it up front.
DROPPED_ENV = (
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "MODEL_DIR",
    "PROFILE_PATH",
    "API_KEY",
    "PYTHONDONTWRITEBYTECODE",
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return {**env, **extra}


class Steps:
    """Times each step and prints it where CI shows it."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.start = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        with self.capsys.disabled():
            print(f"\n[journey] {name}: {time.perf_counter() - t0:.1f} s", flush=True)


@contextmanager
def _background(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process group (make spawns children); terminated as a whole afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _wait(proc: subprocess.Popen[bytes], ok: Callable[[], bool], log: Path, what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if ok():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after 180 s:\n{log.read_text()[-3000:]}")


def test_sweep_then_serve_then_listen_then_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = Steps(capsys)
    clone = tmp_path / "fishbench"
    with steps.step("git clone"):
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)

    with steps.step("make sweep (baseline + engine default)"):
        sweep = subprocess.run(
            ["make", "sweep", f"ARGS={SWEEP_OVERRIDE}"],
            cwd=clone,
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert (clone / "reports" / "profile.yaml").is_file()
    assert (clone / "checkpoints" / "tiny-synthetic" / "SYNTHETIC.json").is_file()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_log = tmp_path / "serve.log"
    with _background(["make", "serve", f"PORT={port}"], clone, _env(), serve_log) as server:
        with steps.step("make serve until /health is ready"):
            _wait(server, lambda: httpx.get(f"{url}/health").status_code == 200, serve_log, "serve")
        health = httpx.get(f"{url}/health").json()
        assert health["synthetic_checkpoint"] is True
        assert health["checkpoint"].endswith("checkpoints/tiny-synthetic")
        assert health["profile_source"].endswith("reports/profile.yaml")
        assert "SYNTHETIC weights" in serve_log.read_text()  # the one warning line

        with steps.step("one request through the official openai client"):
            from openai import OpenAI

            client = OpenAI(base_url=f"{url}/v1", api_key="unused")
            speech = client.audio.speech.create(
                model="s1-mini",
                voice="alloy",
                input="Hello from a fresh clone.",
                response_format="wav",
            )
            audio, rate = sf.read(io.BytesIO(speech.content))
        assert rate == 44_100 and len(audio) > 0

        gradio_port = free_port()
        ui_log = tmp_path / "gradio.log"
        ui_env = _env(API_URL=url, GRADIO_SERVER_PORT=str(gradio_port))
        ui_command = ["uv", "run", "--frozen", "python", "ui/gradio_app.py"]
        with _background(ui_command, clone, ui_env, ui_log) as gradio:
            with steps.step("Gradio page rendered in headless Chromium"):
                gradio_url = f"http://127.0.0.1:{gradio_port}"
                _wait(gradio, lambda: httpx.get(gradio_url).status_code == 200, ui_log, "gradio")
                status = _rendered_text(gradio_url, "#fb-status", "Profile")
            assert "Profile" in status and "audio is noise" in status

    mlflow_port = free_port()
    mlflow_log = tmp_path / "mlflow.log"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    command = ["make", "mlflow-ui", f"MLFLOW_PORT={mlflow_port}"]
    with _background(command, clone, _env(), mlflow_log) as mlflow_ui:
        with steps.step("make mlflow-ui until /health answers, runs listed over REST"):
            _wait(
                mlflow_ui,
                lambda: httpx.get(f"{mlflow_url}/health").status_code == 200,
                mlflow_log,
                "mlflow ui",
            )
            children = _child_runs(mlflow_url)
        assert sorted(children) == ["baseline", "engine-default"]
        printed = re.search(r"trials by p50 latency: (\S+)", mlflow_log.read_text())
        assert printed and printed[1].startswith(f"{mlflow_url}/#/experiments/")
        with steps.step("the printed MLflow URL rendered in headless Chromium"):
            table = _rendered_text(printed[1], "body", "engine-default")
        assert "baseline" in table and "latency_p50_s" in table
    with capsys.disabled():
        print(f"[journey] total: {time.perf_counter() - steps.start:.1f} s", flush=True)


def _rendered_text(url: str, selector: str, expected: str) -> str:
    """The text of ``selector`` once Chromium has rendered ``expected`` into it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function(
            "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)",
            arg=[selector, expected],
            timeout=90_000,
        )
        text = page.locator(selector).inner_text()
        browser.close()
    return text


def _child_runs(url: str) -> list[str]:
    """The sweep's child run names, through MLflow's REST API."""
    experiments = httpx.post(
        f"{url}/api/2.0/mlflow/experiments/search", json={"max_results": 100}
    ).json()["experiments"]
    ids = [e["experiment_id"] for e in experiments if e["name"] != "Default"]
    runs = httpx.post(
        f"{url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": ids, "filter": "tags.mlflow.parentRunId != ''", "max_results": 100},
    ).json()["runs"]
    return [run["info"]["run_name"] for run in runs]
