"""Continuous batching: requests decoded together sample exactly what each samples alone.

Each slot draws its noise from its own request's generator in the order the batch-1 decoder
draws from torch's (the slow head, then the nine fast codebooks), and on the CPU in fp32 the
batched frame step computes each row's logits as the batch-1 step does. So a request decoded
beside others yields the very codes the ``max_batch: 1`` engine yields for it: the strongest
fidelity statement there is, checked token for token (a fidelity gate's KL would pass a far
weaker engine). Requests join and leave at frame boundaries; a consumer that stops frees its
slot; callers beyond ``max_batch`` wait for one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile
from engine.sampling import SamplingParams
from engine.telemetry import SynthesisReport

TEXTS = [
    "Hello there, this is the first request.",
    "A second request speaks a different sentence.",
    "Third voice, third text, and a comma.",
    "Number four is the last one.",
]
# Different sampling settings per request: each slot must use its own.
PARAMS = [
    SamplingParams(seed=10),
    SamplingParams(seed=11, temperature=0.5, top_p=0.9),
    SamplingParams(seed=12, repetition_penalty=1.5),
    SamplingParams(seed=13, temperature=1.2, top_p=0.6),
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> OptimizedFishSpeech:
    """The batch-1 engine the batched one is compared with (its own: these tests fill its voice
    caches, which other modules' tests of the shared engine expect empty)."""
    return OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())


@pytest.fixture(scope="module")
def batched(tiny_checkpoint: Path) -> Iterator[OptimizedFishSpeech]:
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=4))
    yield engine
    engine.close()


def codes(
    engine: OptimizedFishSpeech,
    text: str,
    params: SamplingParams,
    frames: int,
    fixed: bool = True,
    report: SynthesisReport | None = None,
    reference: tuple[Path, str] | None = None,
) -> torch.Tensor:
    """All codes [C, n] of one request (end of speech allowed unless ``fixed``)."""
    audio, ref_text = reference if reference else (None, None)
    report = report if report is not None else SynthesisReport()
    prompt, prefix_len = engine._prepare(text, audio, ref_text, report)
    blocks = engine.iter_codes(
        prompt, params, frames, frames if fixed else None, report, prefix_len
    )
    return torch.cat(list(blocks), dim=1)


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on their own threads, released together; their results in order."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # re-raised below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


@contextmanager
def held(engine: OptimizedFishSpeech, waiting: int) -> Iterator[None]:
    """Hold the scheduler between frame steps until ``waiting`` requests have queued, so they
    all join at the same boundary (the body starts the requests)."""
    scheduler = engine.batcher
    assert scheduler is not None
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait()

    holding = threading.Thread(target=scheduler.call, args=(hold,))
    holding.start()
    entered.wait(30)
    try:
        yield
        while scheduler._waiting.qsize() < waiting:
            threading.Event().wait(0.01)
    finally:
        release.set()
        holding.join(30)


@pytest.mark.parametrize(("fixed", "frames"), [(True, 48), (False, 160)])
def test_batched_requests_sample_exactly_their_batch_one_codes(
    engine: OptimizedFishSpeech, batched: OptimizedFishSpeech, fixed: bool, frames: int
) -> None:
    """Four requests with different texts, seeds and sampling settings, decoded together: each
    one's codes equal the batch-1 engine's, with fixed frame counts and with end of speech."""
    expected = [codes(engine, t, p, frames, fixed) for t, p in zip(TEXTS, PARAMS, strict=True)]
    reports = [SynthesisReport() for _ in TEXTS]
    got = together(
        [
            lambda i=i: codes(batched, TEXTS[i], PARAMS[i], frames, fixed, reports[i])
            for i in range(len(TEXTS))
        ]
    )
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert torch.equal(want, have), f"request {i}"
    assert max(r.batch_occupancy for r in reports) > 1


def test_a_request_samples_the_same_whatever_its_neighbours(
    batched: OptimizedFishSpeech,
) -> None:
    alone = codes(batched, TEXTS[0], PARAMS[0], 40)
    beside_others = together(
        [lambda i=i: codes(batched, TEXTS[i], PARAMS[i], 40) for i in range(4)]
    )[0]
    beside_copies = together([lambda: codes(batched, TEXTS[0], PARAMS[0], 40)] * 3)
    assert torch.equal(alone, beside_others)
    assert all(torch.equal(alone, c) for c in beside_copies)


def test_a_saved_voice_joins_from_the_prefix_cache_with_the_same_codes(
    engine: OptimizedFishSpeech,
    batched: OptimizedFishSpeech,
    piper_reference: tuple[Path, str],
) -> None:
    """A voice's prompt K/V restored from the prefix cache into a slot row decode as a full
    prefill does on the batch-1 engine."""
    want = codes(engine, TEXTS[1], PARAMS[1], 24, reference=piper_reference)
    first, again = SynthesisReport(), SynthesisReport()
    codes(batched, TEXTS[0], PARAMS[0], 24, report=first, reference=piper_reference)
    have = codes(batched, TEXTS[1], PARAMS[1], 24, report=again, reference=piper_reference)
    assert again.prefix_cache_hit
    assert torch.equal(want, have)


def test_a_short_request_leaves_when_it_ends_without_waiting_for_the_long_one(
    batched: OptimizedFishSpeech,
) -> None:
    """Joined at the same frame boundary, the short request decodes beside the long one for all
    of its frames; the long one runs on alone after it left."""
    long_report, short_report = SynthesisReport(), SynthesisReport()
    with held(batched, waiting=2):
        results = []
        starts = [
            lambda: codes(batched, TEXTS[0], PARAMS[0], 200, report=long_report),
            lambda: codes(batched, TEXTS[1], PARAMS[1], 20, report=short_report),
        ]
        threads = [threading.Thread(target=lambda f=f: results.append(f())) for f in starts]
        for t in threads:
            t.start()
    for t in threads:
        t.join(120)
    assert (long_report.frames, short_report.frames) == (200, 20)
    assert short_report.batch_occupancy == 2.0
    assert long_report.batch_occupancy == pytest.approx((20 * 2 + 180 * 1) / 200)


def test_a_consumer_that_stops_frees_its_slot(tiny_checkpoint: Path) -> None:
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=2))
    try:
        prompt, _ = engine._prepare(TEXTS[0], None, None, SynthesisReport())
        blocks = engine.iter_codes(prompt, PARAMS[0], 1000, 1000, SynthesisReport())
        next(blocks)
        blocks.close()
        reports = [SynthesisReport(), SynthesisReport()]
        together(
            [lambda i=i: codes(engine, TEXTS[i], PARAMS[i], 16, report=reports[i]) for i in (0, 1)]
        )
        assert [r.frames for r in reports] == [16, 16]
        assert engine.batcher is not None and not any(engine.batcher._busy)
    finally:
        engine.close()


def test_callers_beyond_max_batch_wait_for_a_slot_and_decode_the_same(
    engine: OptimizedFishSpeech, tiny_checkpoint: Path
) -> None:
    two = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=2))
    try:
        expected = [codes(engine, t, p, 32) for t, p in zip(TEXTS, PARAMS, strict=True)]
        reports = [SynthesisReport() for _ in TEXTS]
        with held(two, waiting=4):
            results: dict[int, torch.Tensor] = {}
            threads = [
                threading.Thread(
                    target=lambda i=i: results.__setitem__(
                        i, codes(two, TEXTS[i], PARAMS[i], 32, report=reports[i])
                    )
                )
                for i in range(4)
            ]
            for t in threads:
                t.start()
        for t in threads:
            t.join(120)
        assert all(torch.equal(expected[i], results[i]) for i in range(4))
        assert max(r.batch_occupancy for r in reports) == 2.0
        # Two requests joined at the held boundary; two waited for them to end.
        waited = sorted(r.queue_s for r in reports)
        assert waited[2] > waited[1]
    finally:
        two.close()


def test_batched_streams_give_each_caller_its_own_report(batched: OptimizedFishSpeech) -> None:
    """``last_report`` is per thread: each concurrent stream reads its own frames and audio."""

    def stream(i: int) -> tuple[int, float, int]:
        audio = list(batched.synthesize_stream(TEXTS[i], fixed_frames=8 * (i + 1), seed=i))
        report = batched.last_report
        return report.frames, report.audio_s, sum(len(a) for a in audio)

    results = together([lambda i=i: stream(i) for i in range(4)])
    for i, (frames, audio_s, samples) in enumerate(results):
        assert frames == 8 * (i + 1)
        assert samples == frames * batched.samples_per_frame
        assert audio_s == pytest.approx(samples / batched.sample_rate)


def test_resident_bytes_count_every_slot(tiny_checkpoint: Path) -> None:
    """The perf model's device memory is the batched engine's tensors to the byte: one KV row
    per padded slot (3 requests run at a padded batch of 4) beside the batch-1 prefill cache."""
    three = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=3))
    one = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())
    try:
        assert three.resident_bytes().total == three.device_bytes()
        assert three.resident_bytes().kv_cache == 5 * one.resident_bytes().kv_cache
    finally:
        three.close()
