"""The compiled frame step is one graph, reused by every request whatever its length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile


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
    assert counters["stats"]["unique_graphs"] == 2  # same KV bucket, same graphs
    assert not counters["recompiles"]  # no guard failed for another prompt length or frame count
