"""Every compiled part of the engine, through the requests a service sees after ``warmup()``:
the same tokens and audio as eager, and not one recompile.

The sequence is what a restarted service gets: a new voice, the same voice again (its prompt
K/V from the prefix cache, so prefill starts mid-prompt), a 60-frame stream (every codec window
length), and a longer text that attends over a larger KV bucket. Warm-up must have built every
graph those need: dynamo builds no graph after it, neither a recompile nor a first compile.

Each profile runs under two backends: ``aot_eager`` (dynamo's capture and guards, AOTAutograd's
functionalisation) and ``inductor`` (C++ code generation on the CPU, as a GPU-less user runs it).
Inductor normally draws the sampler's noise from its own Philox stream (seeded from torch's
generator, so a seed still repeats, but not eager's numbers); ``fallback_random`` makes it call
eager's RNG, so the compiled engine must sample the very tokens eager samples. A token that
differs moves the audio by 1e-3 to 1e-2, outside the tolerances below, which leave room only for
the codec's float rounding.

One pair is exempt from token equality: bf16 under inductor, whose fused kernels keep fp32
between the ops eager rounds to bf16 one by one. Its logits move by bf16 rounding, so a sample
at a near tie may flip (seen: one fast-codebook token in frame 11 of the first request, 4.4e-3
of audio). That row must still run every request with eager's shapes, finite, and recompile
nothing; how far bf16 moves the distributions is the fidelity gate's job (teacher-forced KL).
Minutes each: ``make test-compile`` runs them, ``make test`` does not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile

# The profile the compiled service runs (ENABLE_TORCH_COMPILE on a CPU resolves to it), with a
# short cache so its two KV buckets (256, 512) warm in seconds; and the int8 weight-only CPU row.
COMPILED = {
    "fp32 decode+prefill+codec": EngineProfile(
        compile_decode="default", compile_codec="default", compile_prefill=True, max_seq_len=512
    ),
    "bf16 int8 decode": EngineProfile(
        precision="bf16", quantization="int8", compile_decode="default", max_seq_len=512
    ),
}
BACKENDS = ["aot_eager", "inductor"]
# Audio, max abs difference, with every token equal: fp32 codec rounding, and a bf16 codec (eager
# in both engines here) that rounds once more.
FRAMES_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-3}


def service_requests(engine: OptimizedFishSpeech, voice: tuple[Path, str]) -> Iterator[Any]:
    """(name, audio, report) of each request a freshly started service typically gets."""
    audio, text = voice
    yield (
        "new voice",
        engine.synthesize("A new voice speaks.", audio, text, seed=1, max_new_tokens=24),
    )
    yield (
        "same voice",
        engine.synthesize("The same voice again.", audio, text, seed=2, max_new_tokens=24),
    )
    stream = engine.synthesize_stream(
        "A stream of sixty frames.", audio, text, fixed_frames=60, seed=3
    )
    yield "60-frame stream", np.concatenate(list(stream))
    long_text = "A longer text that needs the larger bucket, said again and again. " * 4
    yield "longer text", engine.synthesize(long_text, fixed_frames=160, seed=4)


@pytest.fixture
def eager_random_numbers() -> Iterator[None]:
    """Inductor's random ops call eager's generator (a config patch, undone after the test)."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        yield


def _with_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's own ``torch.compile`` calls, on ``backend`` (a mode needs inductor)."""
    real_compile = torch.compile

    def compile_on(fn: Any, **options: Any) -> Any:
        if backend != "inductor":
            options.pop("mode", None)
        return real_compile(fn, backend=backend, **options)

    monkeypatch.setattr(torch, "compile", compile_on)


@pytest.mark.compiled
@pytest.mark.usefixtures("eager_random_numbers")
@pytest.mark.timeout(1800)  # an inductor warm-up of every graph takes minutes on two cores
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(COMPILED))
def test_compiled_engine_matches_eager_and_never_recompiles_after_warmup(
    name: str,
    backend: str,
    tiny_checkpoint: Path,
    piper_reference: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = COMPILED[name]
    # A compiled codec streams with left context (stateful streaming runs eager): so does its twin.
    streaming = "context" if profile.compile_codec != "none" else profile.codec_streaming
    eager_profile = profile.model_copy(
        update={
            "compile_decode": "none",
            "compile_codec": "none",
            "compile_prefill": False,
            "codec_streaming": streaming,
        }
    )
    eager = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, eager_profile)
    expected = {req: audio for req, audio in service_requests(eager, piper_reference)}

    _with_backend(backend, monkeypatch)
    torch._dynamo.reset()  # graphs of other engines in this process would count against limits
    compiled = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, profile)
    compiled.warmup()
    counters.clear()
    reports = {}
    for request, audio in service_requests(compiled, piper_reference):
        reports[request] = compiled.last_report
        assert audio.shape == expected[request].shape, request
        assert np.isfinite(audio).all(), request
        if compiled.dtype == torch.float32 or backend == "aot_eager":
            tolerance = FRAMES_TOLERANCE[compiled.dtype]
            np.testing.assert_allclose(audio, expected[request], atol=tolerance, err_msg=request)

    assert reports["same voice"].prefix_cache_hit
    assert reports["longer text"].kv_bucket > reports["new voice"].kv_bucket
    # Every graph dynamo builds, a recompile or a first compile, bumps this one counter (torch
    # 2.11 keeps no recompile count of its own: TORCH_LOGS=recompiles shows the reasons).
    assert counters["stats"]["unique_graphs"] == 0


# Continuous batching: one static step graph per (padded batch size, KV bucket), 3 x 2 here.
BATCHED = EngineProfile(
    max_batch=4, compile_decode="default", compile_prefill=True, max_seq_len=512
)


@pytest.mark.compiled
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_batched_engine_samples_the_batch_one_codes_and_never_recompiles(
    backend: str,
    tiny_checkpoint: Path,
    piper_reference: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four requests at once after warm-up (a saved voice, a longer text in the larger bucket,
    end of speech allowed in one): each one's audio is the eager batch-1 engine's, and dynamo
    builds no graph. Each slot's noise is an input drawn from its request's generator, so even
    inductor's own random numbers play no part (no ``fallback_random`` here)."""
    audio, text = piper_reference
    long_text = "A longer text that needs the larger bucket, said again and again. " * 4
    requests = [
        ("A new voice speaks.", {"reference_audio": audio, "reference_text": text}, 24),
        (long_text, {}, 120),
        ("Short and sweet.", {}, None),
        ("Four at once.", {"temperature": 0.6, "top_p": 0.9}, 40),
    ]

    def run(engine: OptimizedFishSpeech, i: int) -> np.ndarray:
        words, extra, frames = requests[i]
        budget = {"fixed_frames": frames} if frames else {"max_new_tokens": 64}
        return engine.synthesize(words, seed=20 + i, **extra, **budget)

    eager = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint,
        BATCHED.model_copy(
            update={"max_batch": 1, "compile_decode": "none", "compile_prefill": False}
        ),
    )
    expected = [run(eager, i) for i in range(len(requests))]

    _with_backend(backend, monkeypatch)
    torch._dynamo.reset()
    compiled = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, BATCHED)
    try:
        compiled.warmup()
        counters.clear()
        results: list[np.ndarray | None] = [None] * len(requests)
        start = threading.Barrier(len(requests))

        def worker(i: int) -> None:
            start.wait()
            results[i] = run(compiled, i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        for i, (want, have) in enumerate(zip(expected, results, strict=True)):
            assert have is not None and have.shape == want.shape, i
            np.testing.assert_allclose(
                have, want, atol=FRAMES_TOLERANCE[torch.float32], err_msg=str(i)
            )
        assert compiled.batcher is not None and compiled.batcher.occupancy > 1
        assert counters["stats"]["unique_graphs"] == 0
    finally:
        compiled.close()
