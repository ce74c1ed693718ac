"""The torch.compile cache: one persistent folder per (torch, checkpoint config, device, CPU),
shared by every profile.

Specification:
- the folder key changes with torch's version, the checkpoint's config.json, the device and the
  CPU, and with no profile knob: inductor's own keys are content hashes of each graph and its
  settings, so profiles share the folder and a graph two of them build compiles once
  (``tests/engine/test_compile_graphs.py`` finds per knob which graphs a knob changes);
- ``compiled_graphs`` names the graph units a profile compiles by the knobs that shape them, and
  the cache folder records the units sweeps have built;
- the inductor settings are explicit and follow the profile;
- a second process compiling the same thing starts warm: inductor's FX graph cache and
  AOTAutograd's cache hit on disk, also for a profile differing in a knob no graph depends on
  (real inductor in two processes, half a minute: ``make test-compile``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import pytest
import torch
from fresh_process import compile_env, run_snippet

from engine import compile_cache
from engine.compile_cache import (
    COMPILE_CACHE_ENV,
    built_graphs,
    cache_folder,
    cache_key,
    cache_root,
    compile_counters,
    compiled_graphs,
    configure_compilation,
    inductor_settings,
    remember_built,
)
from engine.profile import EngineProfile, Hardware, resolve_profile

CONFIG = {"dim": 64, "n_layer": 2, "vocab_size": 4096}
CUDA = Hardware("cuda", "NVIDIA GeForce RTX 4060", (8, 9), True)


def key(config=CONFIG, device="cpu", **kw) -> str:
    return cache_key(config, device, **kw)


def test_key_is_a_short_stable_hex_digest() -> None:
    k = key()
    assert k == key() and len(k) == 16 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"chunk_size": 8},
        {"num_streams": 2},
        {"quantization": "int8"},
        {"compile_decode": "default"},
        {"precision": "bf16"},
        {"max_seq_len": 1024},
    ],
)
def test_every_profile_shares_one_cache_folder(
    change: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder no longer depends on the profile: a profile that changes only ``chunk_size``
    (or anything else) starts from the artifacts another profile compiled."""
    import torch._functorch.config
    import torch._inductor.config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))  # restored afterwards
    inductor = torch._inductor.config
    names = [k[9:] for k in inductor_settings(EngineProfile()) if k.startswith("inductor.")]
    # patch() restores every setting configure_compilation changes once the test is over
    with (
        inductor.patch({n: getattr(inductor, n) for n in names}),
        torch._functorch.config.patch(
            enable_autograd_cache=torch._functorch.config.enable_autograd_cache
        ),
    ):
        first = configure_compilation(EngineProfile(), CONFIG, "cpu", tmp_path)
        other = configure_compilation(EngineProfile(**change), CONFIG, "cpu", tmp_path)
    assert other == first == cache_folder(CONFIG, "cpu", tmp_path)


def test_the_cpu_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's keys leave out the vector ISA its C++ kernels were built for."""
    before = key()
    monkeypatch.setattr(compile_cache, "_cpu_fingerprint", lambda: "model name: another CPU")
    assert key() != before


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
    assert folder == tmp_path / cache_key(b"{}", "cpu") and folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert str(folder) in caplog.text and "(cold;" in caplog.text


def resolved(device: Hardware | None = None, **knobs: object) -> EngineProfile:
    hw = device or Hardware("cpu", "cpu", None, False)
    return resolve_profile(EngineProfile(**knobs), hw)[0]


@pytest.mark.parametrize(
    "change",
    [
        {"chunk_size": 32},
        {"first_chunk_size": 2},
        {"codec_left_context": 16},
        {"num_streams": 2},
        {"eos_check_interval": 32},
        {"cache_limit": 7},
        {"prefix_cache_mb": 0},
        {"warmup_buckets": [256]},
        {"fullgraph": False},
        {"encode_chunk_seconds": 10.0},
        {"int4_group_size": 128},  # not int4: no group
    ],
)
def test_knobs_no_graph_depends_on_leave_the_units_alone(change: dict) -> None:
    base = {"compile_decode": "reduce-overhead", "compile_prefill": True}
    assert compiled_graphs(resolved(CUDA, **base, **change)) == compiled_graphs(
        resolved(CUDA, **base)
    )


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        ({"precision": "fp16"}, {"decode_step", "prefill"}),
        ({"quantization": "int8"}, {"decode_step", "prefill"}),
        ({"max_seq_len": 2048}, {"decode_step", "prefill"}),
        ({"coordinate_descent_tuning": False}, {"decode_step", "prefill"}),
        ({"tf32": False}, {"decode_step", "prefill"}),
        ({"compile_decode": "default"}, {"decode_step"}),  # prefill compiles without a mode
    ],
)
def test_knobs_that_shape_a_graph_or_its_settings_change_its_unit(
    change: dict, changed: set[str]
) -> None:
    base = {"compile_decode": "reduce-overhead", "compile_prefill": True}
    before = compiled_graphs(resolved(CUDA, **base))
    after = compiled_graphs(resolved(CUDA, **{**base, **change}))
    assert {unit.split("(")[0] for unit in before ^ after} == changed


def test_codec_units_are_one_per_length_and_shared_where_lengths_agree() -> None:
    """``chunk_size`` changes which codec lengths are warmed, not the graph of a length."""
    a = compiled_graphs(resolved(compile_codec="default", chunk_size=16))
    b = compiled_graphs(resolved(compile_codec="default", chunk_size=32))
    assert a != b and a & b  # 48 is 16 + 32 of left context, 64 is 32 + 32; 4, 8, 16, 32 shared
    assert all(u.startswith("codec@") for u in a | b)
    assert not compiled_graphs(resolved())  # eager: nothing compiles
    tuned = compiled_graphs(resolved(compile_codec="default", int4_group_size=128))
    assert tuned == a  # no int4, so no group size in the unit
    int4 = {"quantization": "int4", "precision": "bf16", "compile_decode": "default"}
    assert compiled_graphs(resolved(**int4)) != compiled_graphs(
        resolved(**int4, int4_group_size=128)
    )


def test_built_graph_units_are_remembered_in_the_cache_folder(tmp_path: Path) -> None:
    assert built_graphs(tmp_path) == set()
    remember_built(tmp_path, {"a", "b"})
    remember_built(tmp_path, {"b", "c"})
    assert built_graphs(tmp_path) == {"a", "b", "c"}
    (tmp_path / "built-graphs.json").write_text("not json")
    assert built_graphs(tmp_path) == set()


WARM_START = """
import json, sys, time
from pathlib import Path
import torch
from engine import compile_cache
from engine.compile_cache import compile_counters, configure_compilation
from engine.profile import EngineProfile

profile = EngineProfile(compile_decode="default", chunk_size=int(sys.argv[2]))
configure_compilation(profile, b"{}", "cpu", root=Path(sys.argv[1]))
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


def _compile_in_fresh_process(root: Path, chunk_size: int = 16) -> dict:
    return run_snippet(WARM_START, [str(root), str(chunk_size)], compile_env(), timeout=280)


@pytest.mark.compiled
@pytest.mark.timeout(300)
def test_a_second_process_starts_warm_under_another_chunk_size(tmp_path: Path) -> None:
    cold = _compile_in_fresh_process(tmp_path, chunk_size=16)
    warm = _compile_in_fresh_process(tmp_path, chunk_size=8)
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
