"""The torch.compile cache: a persistent folder per (torch, compile knobs, checkpoint, device).

Specification:
- the folder key changes with anything that changes compiled code (a compile-relevant knob, the
  checkpoint's config.json, torch's version, the device) and not with runtime-only knobs;
- the inductor settings are explicit and follow the profile;
- a second process compiling the same thing starts warm: inductor's FX graph cache and
  AOTAutograd's cache hit on disk.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.compile_cache import (
    COMPILE_CACHE_ENV,
    cache_key,
    cache_root,
    compile_counters,
    configure_compilation,
    inductor_settings,
)
from engine.profile import EngineProfile

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"dim": 64, "n_layer": 2, "vocab_size": 4096}


def key(profile: EngineProfile | None = None, config=CONFIG, device="cpu", **kw) -> str:
    return cache_key(profile or EngineProfile(), config, device, **kw)


def test_key_is_a_short_stable_hex_digest() -> None:
    k = key()
    assert k == key() and len(k) == 16 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"precision": "bf16"},
        {"compile_decode": "default"},
        {"compile_prefill": True},
        {"quantization": "int8"},
        {"max_seq_len": 1024},
        {"coordinate_descent_tuning": False},
    ],
)
def test_key_changes_with_a_compile_relevant_knob(change: dict) -> None:
    assert key(EngineProfile(**change)) != key()


@pytest.mark.parametrize(
    "change", [{"cache_limit": 7}, {"prefix_cache_mb": 0}, {"warmup_buckets": [256, 512]}]
)
def test_key_ignores_knobs_that_do_not_change_compiled_code(change: dict) -> None:
    assert key(EngineProfile(**change)) == key()


def test_key_changes_with_config_json_content_not_its_formatting() -> None:
    assert key(config={**CONFIG, "n_layer": 3}) != key()
    as_bytes = json.dumps(CONFIG, indent=2).encode()
    assert key(config=as_bytes) == key(config=as_bytes.decode()) == key(config=CONFIG)


def test_key_changes_with_torch_version_and_device() -> None:
    assert key(torch_version=torch.__version__) == key()
    assert key(torch_version="2.99.0+cu999") != key()
    assert key(device="NVIDIA H100 80GB HBM3") != key()


@pytest.mark.parametrize("tuning", [True, False])
def test_inductor_settings_follow_the_profile(tuning: bool) -> None:
    settings = inductor_settings(EngineProfile(coordinate_descent_tuning=tuning))
    assert settings["inductor.coordinate_descent_tuning"] is tuning
    assert settings["inductor.fx_graph_cache"] is True
    assert settings["functorch.enable_autograd_cache"] is True
    assert all(k.split(".")[0] in {"inductor", "functorch"} for k in settings)


def test_cache_root_defaults_under_the_working_directory_and_env_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cache_root() == tmp_path / ".cache" / "torch-compile"
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"


def test_configure_compilation_sets_config_env_and_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch._functorch.config
    import torch._inductor.config

    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))  # restored afterwards
    profile = EngineProfile(compile_decode="default", coordinate_descent_tuning=False)
    inductor, functorch = torch._inductor.config, torch._functorch.config
    settings = inductor_settings(profile)
    # patch() restores every setting configure_compilation changes once the test is over
    saved_inductor = {k[9:]: getattr(inductor, k[9:]) for k in settings if k[:9] == "inductor."}
    with inductor.patch(saved_inductor), functorch.patch(enable_autograd_cache=False):
        inductor.coordinate_descent_tuning = True  # what torchao's quantize_ leaves behind
        with caplog.at_level(logging.INFO, logger="engine.compile_cache"):
            folder = configure_compilation(profile, b"{}", "cpu")
        assert inductor.coordinate_descent_tuning is False
        assert functorch.enable_autograd_cache is True
        assert inductor.triton.unique_kernel_names is True
    assert folder == tmp_path / cache_key(profile, b"{}", "cpu") and folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert str(folder) in caplog.text and "(cold)" in caplog.text


WARM_START = """
import json, sys, time
from pathlib import Path
import torch
from engine import compile_cache
from engine.compile_cache import compile_counters, configure_compilation
from engine.profile import EngineProfile

configure_compilation(EngineProfile(compile_decode="default"), b"{}", "cpu", root=Path(sys.argv[1]))
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
compiled = torch.compile(mlp)
start = time.perf_counter()
with torch.no_grad():
    compiled(torch.randn(1, 64))
seconds = time.perf_counter() - start
probes = compile_cache.isa_probes_run
print(json.dumps({"seconds": seconds, "isa_probes": probes, **compile_counters()}))
"""


def _compile_in_fresh_process(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR_")}
    env.pop(COMPILE_CACHE_ENV, None)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no worker pool: a 2-core CI box stays usable
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", WARM_START, str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_process_starts_warm(tmp_path: Path) -> None:
    cold = _compile_in_fresh_process(tmp_path)
    warm = _compile_in_fresh_process(tmp_path)
    print(f"compile seconds: cold {cold['seconds']:.1f}, warm {warm['seconds']:.1f}")
    assert cold["fxgraph_cache_miss"] >= 1 and cold["fxgraph_cache_hit"] == 0
    assert warm["fxgraph_cache_hit"] >= 1 and warm["fxgraph_cache_miss"] == 0
    assert warm["autograd_cache_hit"] >= 1
    # inductor's CPU vector-ISA probes (a torch-importing subprocess each) ran once, not again
    x86 = platform.machine() in ("x86_64", "AMD64")
    assert warm["isa_probes"] == 0 and (cold["isa_probes"] >= 1 or not x86)
    assert (tmp_path / "isa-checks.json").is_file() or not x86
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # one keyed folder


def test_compile_counters_reads_dynamo_counters() -> None:
    from torch._dynamo.utils import counters

    before = compile_counters()
    counters["inductor"]["fxgraph_cache_hit"] += 1
    try:
        assert compile_counters()["fxgraph_cache_hit"] == before["fxgraph_cache_hit"] + 1
    finally:
        counters["inductor"]["fxgraph_cache_hit"] -= 1
