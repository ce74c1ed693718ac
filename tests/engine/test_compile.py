"""The compiled frame step is one graph, reused by every request whatever its length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch._dynamo.utils import counters

from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile


def test_a_compile_profile_compiles_step_and_prefill(tiny_checkpoint: Path) -> None:
    profile = EngineProfile(compile_decode="default", compile_prefill=True)
    dec = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, profile).decoder
    assert dec._step is not dec.decode_step and dec._prefill is not dec.prefill


def test_compiled_step_and_prefill_never_recompile_across_requests(engine) -> None:
    eager = engine.synthesize("Hello there.", fixed_frames=6, seed=0)
    dec = engine.decoder
    # Dynamo's eager backend keeps the test fast: graph capture and guards are what is checked.
    dec._step = torch.compile(dec.decode_step, backend="eager", fullgraph=True)
    dec._prefill = torch.compile(dec.prefill, backend="eager", dynamic=True, fullgraph=True)
    try:
        counters.clear()
        engine.semantic_cache.clear()
        assert np.array_equal(engine.synthesize("Hello there.", fixed_frames=6, seed=0), eager)
        assert counters["stats"]["unique_graphs"] == 2
        engine.synthesize(
            "A much longer sentence than the first one, with many more words.",
            fixed_frames=12,
            seed=1,
        )
        engine.synthesize("Short.", max_new_tokens=9, seed=2)
        assert counters["stats"]["unique_graphs"] == 2
    finally:
        dec._step, dec._prefill = dec.decode_step, dec.prefill
