"""Which profile knobs change the graphs torch.compile builds, found per knob (tiny checkpoint).

The compile cache is one folder for every profile (``engine/compile_cache.py``): inductor's keys
hash each graph's code and its inputs' shapes, strides and dtypes, so two profiles share a
compiled graph exactly when Dynamo captures the same graph for both. Each test here captures the
engine's own compiled functions (frame step, prefill, the codec at one decode length) on a
recording Dynamo backend under the default compiled profile and under one other knob value, and
compares the graphs' hashes with what ``compiled_graphs`` (the sweep's count of cold compiles)
says: a knob outside ``GRAPH_KNOBS`` leaves every graph as it was, a knob inside changes the
graphs of the functions it names. The eager backend keeps it cheap: graph capture is what is
compared, inductor's code generation is not (inductor's key adds its settings, which
``SETTING_KNOBS`` lists).

Cost: one engine load and capture per distinct knob set (16), about 5 s each on a 2-core CPU,
and the last test runs real inductor in two processes: all but the classification of every knob
run with ``make test-compile``, not ``make test``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from fresh_process import compile_env, run_snippet

from engine.compile_cache import GRAPH_KNOBS, SETTING_KNOBS, compiled_graphs
from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile, Hardware, resolve_profile

BASE = {
    "compile_decode": "default",
    "compile_prefill": True,
    "compile_codec": "default",
    "max_seq_len": 256,
}
CODEC_LENGTH = 8
FUNCTIONS = {"decode_step": "decode_step", "prefill": "prefill", "_decode_eager": "codec"}
# Knobs no graph depends on: each value here must capture the very graphs the base profile does.
NEUTRAL = [
    {"chunk_size": 8},
    {"first_chunk_size": 2},
    {"codec_left_context": 16},
    {"codec_streaming": "context"},  # a compiled codec streams with context: it decides nothing
    {"codec_thread": True},
    {"eos_check_interval": 32},
    {"fullgraph": False},
    {"cache_limit": 3},
    {"prefix_cache_mb": 0},
    {"encode_chunk_seconds": 10.0},
    {"warmup_buckets": [512]},
    {"coordinate_descent_tuning": False},  # an inductor setting: in its key, not in the graph
]
# Knobs that shape graphs, compared within a base where they apply.
SHAPING = [
    ({"precision": "bf16"}, {}),
    ({"max_seq_len": 512}, {}),
    ({"codec_layout": "upstream"}, {}),
    ({"quantization": "int8"}, {"precision": "bf16"}),
    ({"int8_kernel": "stock"}, {"precision": "bf16", "quantization": "int8"}),
    ({"int4_group_size": 32}, {"precision": "bf16", "quantization": "int4"}),
]
# Knobs a CPU cannot vary (they resolve to one value here), or that choose which functions compile
# (``max_batch > 1`` compiles the batched step and prefill instead: test_batched_units below).
NOT_ON_CPU = {"device", "tf32", "num_streams"}
CHOOSERS = {"compile_decode", "compile_codec", "compile_prefill", "max_batch"}


def capture(checkpoint: Path, knobs: dict[str, Any]) -> dict[str, str]:
    """Hash of the graph each compiled function captures: the frame step and prefill at the
    256 bucket, the codec at ``CODEC_LENGTH`` frames."""
    graphs: dict[str, str] = {}
    real_compile = torch.compile

    def recording_compile(fn: Any, **options: Any) -> Any:
        name = FUNCTIONS[fn.__name__]

        def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            shapes = [
                (tuple(x.shape), tuple(x.stride()), str(x.dtype))
                if isinstance(x, torch.Tensor)
                else repr(x)
                for x in example_inputs
            ]
            graphs[name] = hashlib.sha256((gm.code + repr(shapes)).encode()).hexdigest()
            return gm.forward

        options.pop("mode", None)  # a backend and a mode cannot both be given
        return real_compile(fn, backend=backend, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", recording_compile)
        torch._dynamo.reset()
        engine = OptimizedFishSpeech.from_checkpoint(checkpoint, EngineProfile(**knobs))
        engine.decoder.warm_bucket(256, steps=1)
        with torch.inference_mode():
            engine.codec._decode(torch.zeros(engine.codec.num_codebooks, CODEC_LENGTH).long())
    assert set(graphs) == {"decode_step", "prefill", "codec"}
    return graphs


def modelled(knobs: dict[str, Any]) -> dict[str, str]:
    """``compiled_graphs``' unit per function for these knobs (on this CPU)."""
    profile = resolve_profile(EngineProfile(**knobs), Hardware("cpu", "cpu", None, False))[0]
    units = compiled_graphs(profile, [CODEC_LENGTH])
    return {unit.split("(")[0].split("@")[0]: unit for unit in units}


@pytest.fixture(scope="module")
def captured(tiny_checkpoint: Path) -> Any:
    """``captured(knobs)``: ``capture`` once per distinct set of knobs in this module."""
    seen: dict[str, dict[str, str]] = {}

    def get(knobs: dict[str, Any]) -> dict[str, str]:
        key = repr(sorted(knobs.items()))
        if key not in seen:
            seen[key] = capture(tiny_checkpoint, knobs)
        return seen[key]

    return get


@pytest.mark.compiled
@pytest.mark.parametrize("change", NEUTRAL, ids=lambda c: next(iter(c)))
def test_a_knob_outside_graph_knobs_captures_the_same_graphs(
    captured: Any, change: dict[str, Any]
) -> None:
    assert captured({**BASE, **change}) == captured(BASE)
    knob = next(iter(change))
    assert all(knob not in knobs for knobs in GRAPH_KNOBS.values())
    if any(knob in knobs for knobs in SETTING_KNOBS.values()):  # same graph, another inductor key
        assert modelled({**BASE, **change}) != modelled(BASE)
    else:
        assert modelled({**BASE, **change}) == modelled(BASE)


@pytest.mark.compiled
@pytest.mark.parametrize(("change", "within"), SHAPING, ids=lambda c: next(iter(c), "base"))
def test_a_graph_knob_changes_exactly_the_graphs_it_is_listed_for(
    captured: Any, change: dict[str, Any], within: dict[str, Any]
) -> None:
    before, after = captured({**BASE, **within}), captured({**BASE, **within, **change})
    changed = {name for name in before if before[name] != after[name]}
    knob = next(iter(change))
    listed = {name for name, knobs in GRAPH_KNOBS.items() if knob in knobs and name in before}
    assert changed == listed
    model_before, model_after = modelled({**BASE, **within}), modelled({**BASE, **within, **change})
    assert {name for name in model_before if model_before[name] != model_after[name]} == changed


def test_batched_units_are_one_step_per_batch_size_and_their_own_prefill() -> None:
    """A batched engine compiles a step per padded batch size over slot caches of its padded
    rows: max_batch 3 and 4 share every graph (both pad to 4 rows), 8 shares none of theirs."""
    three, four = modelled({**BASE, "max_batch": 3}), modelled({**BASE, "max_batch": 4})
    assert set(three) == {"batch_step", "batch_prefill", "codec"}
    both = {u for u in compiled_graphs(_resolved({**BASE, "max_batch": 4}), [CODEC_LENGTH])}
    assert both == compiled_graphs(_resolved({**BASE, "max_batch": 3}), [CODEC_LENGTH])
    steps = {u for u in both if u.startswith("batch_step")}
    assert len(steps) == 3  # batch sizes 1, 2, 4
    eight = compiled_graphs(_resolved({**BASE, "max_batch": 8}), [CODEC_LENGTH])
    assert not steps & eight
    assert three["batch_prefill"] == four["batch_prefill"] != modelled(BASE)["prefill"]


def _resolved(knobs: dict[str, Any]) -> EngineProfile:
    return resolve_profile(EngineProfile(**knobs), Hardware("cpu", "cpu", None, False))[0]


def test_every_knob_is_classified() -> None:
    """A new knob must be placed here (and in GRAPH_KNOBS or not) before the cache shares on it."""
    tested = {next(iter(c)) for c in NEUTRAL} | {next(iter(c)) for c, _ in SHAPING}
    knobs = set(EngineProfile.model_fields) - {"provenance"}
    assert knobs - tested - NOT_ON_CPU - CHOOSERS == set()


WARM_UP = """
import json, sys
from engine.compile_cache import compile_counters
from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile

profile = EngineProfile(compile_decode="default", max_seq_len=256, chunk_size=int(sys.argv[2]))
engine = OptimizedFishSpeech.from_checkpoint(sys.argv[1], profile)
engine.decoder.warm_bucket(256, steps=1)
print(json.dumps(compile_counters()))
"""


def _warm_up_in_a_fresh_process(checkpoint: Path, cache: Path, chunk_size: int) -> dict[str, int]:
    env = compile_env(COMPILE_CACHE_DIR=str(cache))
    return run_snippet(WARM_UP, [str(checkpoint), str(chunk_size)], env, timeout=840)


@pytest.mark.compiled
@pytest.mark.timeout(1800)
def test_with_inductor_another_chunk_size_finds_every_graph_in_the_cache(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Real inductor (minutes cold on a CPU): a process warming the frame step and prefill under
    ``chunk_size=8`` after one under 16 misses no FX graph (before the cache was shared, the
    second got a folder of its own and compiled everything cold)."""
    cold = _warm_up_in_a_fresh_process(tiny_checkpoint, tmp_path, 16)
    warm = _warm_up_in_a_fresh_process(tiny_checkpoint, tmp_path, 8)
    assert cold["fxgraph_cache_miss"] >= 1
    assert warm["fxgraph_cache_miss"] == 0 and warm["fxgraph_cache_hit"] >= 1
