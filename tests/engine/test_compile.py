"""The compiled frame step is one graph, reused by every request whatever its length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.engine import OptimizedFishSpeech
from engine.errors import GenerationCancelled
from engine.profile import DEFAULT_MAX_SEQ_LEN, EngineProfile, reachable_buckets


def test_a_compile_profile_captures_step_and_prefill_once_for_every_request_length(
    tiny_checkpoint: Path, engine: OptimizedFishSpeech, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile's own compile calls, run on Dynamo's eager backend to keep the test fast: graph
    capture and guards are what is checked, inductor's code generation is not."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real_compile = torch.compile

    def recording_compile(fn: Any, **options: Any) -> Any:
        calls.append((fn.__name__, dict(options)))
        options.pop("mode", None)  # a backend and a mode cannot both be given
        return real_compile(fn, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", recording_compile)
    profile = EngineProfile(compile_decode="default", compile_prefill=True)
    compiled = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, profile)
    assert calls == [
        ("decode_step", {"mode": None, "fullgraph": True, "dynamic": False}),
        ("prefill", {"dynamic": True, "fullgraph": True}),
    ]

    counters.clear()
    eager = engine.synthesize("Hello there.", fixed_frames=6, seed=0)
    assert np.array_equal(compiled.synthesize("Hello there.", fixed_frames=6, seed=0), eager)
    assert counters["stats"]["unique_graphs"] == 2  # one step graph, one prefill graph
    compiled.synthesize(
        "A much longer sentence than the first one, with many more words.",
        fixed_frames=12,
        seed=1,
    )
    compiled.synthesize("Short.", max_new_tokens=9, seed=2)
    # Same KV bucket, same graphs: no guard failed for another prompt length or frame count.
    assert counters["stats"]["unique_graphs"] == 2


def test_every_bucket_a_request_can_reach_is_warmed_by_default() -> None:
    """The default cache (4,096) is reachable in five buckets: the default request (1,024 new
    frames) attends over 2,048, or 4,096 with a long reference; a short max_new_tokens, 256."""
    assert reachable_buckets(DEFAULT_MAX_SEQ_LEN) == [256, 512, 1024, 2048, 4096]
    assert reachable_buckets(3000) == [256, 512, 1024, 2048, 3000]
    assert EngineProfile().buckets_to_warm() == [256, 512, 1024, 2048, 4096]
    assert EngineProfile(warmup_buckets=[2048, 256, 8192]).buckets_to_warm() == [256, 2048, 4096]
    with pytest.raises(ValueError, match="256"):
        EngineProfile(warmup_buckets=[300])


def test_warmup_compiles_every_bucket_so_a_default_request_compiles_nothing(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Dynamo's eager backend (graph capture is what is counted): after warm-up, a request
    under the default limits (1,024 new frames: the 2,048 bucket of the tiny checkpoint's
    2,048-token cache) builds no graph; it is stopped after its first block."""
    real_compile = torch.compile

    def eager_compile(fn: Any, **options: Any) -> Any:
        options.pop("mode", None)
        return real_compile(fn, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    compiled = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(compile_decode="default")
    )
    counters.clear()
    compiled.warmup(frames=2)
    buckets = compiled.active_profile.buckets_to_warm()
    assert buckets == [256, 512, 1024, 2048]
    assert counters["stats"]["unique_graphs"] == len(buckets)
    step, attended = compiled.decoder._step, []

    def recording_step(frame: torch.Tensor, input_pos: torch.Tensor, kv_len: int) -> Any:
        attended.append(kv_len)
        return step(frame, input_pos, kv_len)

    compiled.decoder._step = recording_step
    with pytest.raises(GenerationCancelled):
        compiled.synthesize("Hello there.", should_stop=lambda: True)
    assert set(attended) == {2048}
    assert counters["stats"]["unique_graphs"] == len(buckets)  # none built by the request
