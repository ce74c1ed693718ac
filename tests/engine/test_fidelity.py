"""Fidelity against fp32, streaming against one-shot decoding, and the caches' keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.engine import OptimizedFishSpeech
from engine.measure.fidelity import (
    FIDELITY_GATES,
    FidelityReference,
    compare_profile,
    gate_failures,
    measure_fidelity,
)
from engine.profile import EngineProfile

TEXT = "Streaming should sound exactly like decoding in one go."


def test_fp32_against_fp32_is_exact(tiny_checkpoint: Path) -> None:
    """The reference itself (upstream's codec layout; channels-last convolutions round
    differently, and the codec SNR gate judges them: tests/engine/test_codec_layout.py)."""
    same = EngineProfile(codec_layout="upstream")
    figures = measure_fidelity(str(tiny_checkpoint), same, frames=16)
    assert figures["slow_top1"] == 1.0 and figures["fast_top1"] == 1.0
    assert figures["slow_kl"] == 0.0 and figures["fast_kl"] == 0.0
    assert figures["codec_snr_db"] == 300.0
    assert gate_failures(figures) == []


def test_cpu_int8_stays_within_the_gates(tiny_checkpoint: Path) -> None:
    figures = measure_fidelity(str(tiny_checkpoint), EngineProfile(quantization="int8"), frames=16)
    assert 0.0 < figures["slow_kl"] <= FIDELITY_GATES["slow_kl_max"]
    assert 0.0 < figures["fast_kl"] <= FIDELITY_GATES["fast_kl_max"]
    assert gate_failures(figures) == []


def test_a_saved_reference_reads_back_to_the_same_figures(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    reference = FidelityReference.build(str(tiny_checkpoint), "cpu", frames=8)
    reference.save(tmp_path / "reference.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["reference.pt"]  # no partial file left
    loaded = FidelityReference.load(tmp_path / "reference.pt")
    candidate = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(quantization="int8")
    )
    assert compare_profile(candidate, loaded) == compare_profile(candidate, reference)


def test_gates_reject_a_broken_candidate() -> None:
    broken = {
        "slow_top1": 0.01,
        "slow_kl": 3.0,
        "fast_top1": 0.9,
        "fast_kl": 0.001,
        "codec_snr_db": 40.0,
    }
    failures = gate_failures(broken)
    assert len(failures) == 2 and failures[0] == "slow_kl=3 not <= 0.01"


@pytest.mark.parametrize("chunk, left", [(4, 32), (5, 3)])
def test_streamed_chunks_match_one_shot_decoding(
    tiny_checkpoint: Path, chunk: int, left: int
) -> None:
    engine = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint,
        EngineProfile(chunk_size=chunk, first_chunk_size=chunk, codec_left_context=left),
    )
    one_shot = engine.synthesize(TEXT, fixed_frames=17, seed=4)
    chunks = list(engine.synthesize_stream(TEXT, fixed_frames=17, seed=4))
    assert [len(c) for c in chunks[:-1]] == [chunk * 2048] * (len(chunks) - 1)
    streamed = np.concatenate(chunks)
    assert streamed.shape == one_shot.shape
    bound = 1e-5 if left >= 17 else 0.05 * np.abs(one_shot).max()
    assert np.abs(streamed - one_shot).max() <= bound
    assert engine.last_report.ttfa_s < engine.last_report.total_s


@pytest.mark.parametrize("first", [1, 3, 5])
def test_first_chunk_leaves_as_soon_as_its_frames_exist(tiny_checkpoint: Path, first: int) -> None:
    """Counted in frames: the first chunk holds ``first_chunk_size`` frames and is yielded before
    any further frame is generated, whatever the end-of-speech check interval."""
    engine = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(chunk_size=5, first_chunk_size=first, eos_check_interval=8)
    )
    steps = 0
    step = engine.decoder._step

    def counting_step(*args):
        nonlocal steps
        steps += 1
        return step(*args)

    engine.decoder._step = counting_step
    stream = engine.synthesize_stream(TEXT, fixed_frames=24, seed=1)
    first_chunk = next(stream)
    frames_at_first_chunk = steps + 1  # prefill makes the first frame
    rest = list(stream)
    assert len(first_chunk) == first * 2048 and frames_at_first_chunk == first
    assert [len(c) // 2048 for c in rest] == [5] * ((24 - first) // 5) + (
        [(24 - first) % 5] if (24 - first) % 5 else []
    )
    assert steps == 23


def test_a_semantic_cache_hit_streams_chunk_by_chunk(engine) -> None:
    engine.semantic_cache.clear()
    engine.synthesize(TEXT, fixed_frames=20, seed=5)
    decoded = []
    open_stream = engine.codec.open_stream

    def counting_stream():
        decode = open_stream()

        def counting_decode(*args):
            decoded.append(args[1:])
            return decode(*args)

        return counting_decode

    engine.codec.open_stream = counting_stream
    try:
        stream = engine.synthesize_stream(TEXT, fixed_frames=20, seed=5)
        first_chunk = next(stream)
        assert engine.last_report.semantic_cache_hit is False  # set when the stream ends
        assert decoded == [(0, engine.active_profile.first_chunk_size)]
        assert len(first_chunk) == engine.active_profile.first_chunk_size * 2048
        list(stream)
        assert engine.last_report.semantic_cache_hit
    finally:
        del engine.codec.open_stream


def test_semantic_cache_hits_on_repeat_and_misses_when_any_parameter_changes(engine) -> None:
    engine.semantic_cache.clear()
    first = engine.synthesize(TEXT, fixed_frames=4, seed=9, temperature=0.7)
    assert not engine.last_report.semantic_cache_hit
    again = engine.synthesize(TEXT, fixed_frames=4, seed=9, temperature=0.7)
    assert engine.last_report.semantic_cache_hit and np.array_equal(first, again)
    engine.synthesize(TEXT, fixed_frames=4, seed=9, temperature=0.71)
    assert not engine.last_report.semantic_cache_hit
    engine.synthesize(TEXT, fixed_frames=4, seed=10, temperature=0.7)
    assert not engine.last_report.semantic_cache_hit
    engine.synthesize(TEXT + " More.", fixed_frames=4, seed=9, temperature=0.7)
    assert not engine.last_report.semantic_cache_hit


def test_unseeded_requests_are_never_served_from_the_cache(engine) -> None:
    engine.synthesize(TEXT, fixed_frames=4)
    engine.synthesize(TEXT, fixed_frames=4)
    assert not engine.last_report.semantic_cache_hit


def test_reference_cache_is_keyed_by_audio_bytes_and_persists(
    tmp_path: Path, tiny_checkpoint: Path, piper_reference
) -> None:
    path, _ = piper_reference
    cache_dir = tmp_path / "refcache"
    first = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(), reference_cache_dir=cache_dir
    )
    codes, hit = first.reference_codes(path.read_bytes())
    assert not hit and first.reference_codes(path)[1]
    second = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(), reference_cache_dir=cache_dir
    )
    again, hit = second.reference_codes(path.read_bytes())
    assert hit and np.array_equal(codes.numpy(), again.numpy())
    assert second.reference_cache.stats()["hits"] == 1


def _cli_fidelity(checkpoint: Path, profile: Path, capsys: pytest.CaptureFixture) -> dict:
    from harness.cli import main

    argv = ["fidelity", "--checkpoint", str(checkpoint), "--profile", str(profile)]
    assert main([*argv, "--frames", "8"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fidelity_cli_prints_figures_within_the_gates_and_passes(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """CPU int8 on the tiny checkpoint: a real, small divergence from fp32, inside every gate."""
    profile = EngineProfile(quantization="int8").save(tmp_path / "int8.yaml")
    last = _cli_fidelity(tiny_checkpoint, profile, capsys)
    assert last["passes_gates"] is True and last["frames"] == 8
    assert 0.0 < last["slow_kl"] <= FIDELITY_GATES["slow_kl_max"]
    assert 0.0 < last["fast_kl"] <= FIDELITY_GATES["fast_kl_max"]
    assert FIDELITY_GATES["slow_top1_min"] <= last["slow_top1"] <= 1.0
    assert FIDELITY_GATES["fast_top1_min"] <= last["fast_top1"] <= 1.0
    assert last["codec_snr_db"] >= FIDELITY_GATES["codec_snr_db_min"]


def test_fidelity_cli_fails_the_gates_it_names(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Figures outside the gates print ``passes_gates: false`` and one warning per failed gate
    (the figures are given, not measured: the verdict is what is under test)."""
    import engine.measure.fidelity

    broken = {"slow_top1": 0.01, "slow_kl": 3.0, "fast_top1": 0.9, "fast_kl": 0.001}
    figures = {**broken, "codec_snr_db": 40.0, "frames": 8}
    monkeypatch.setattr(engine.measure.fidelity, "measure_fidelity", lambda *args: dict(figures))
    profile = EngineProfile().save(tmp_path / "any.yaml")
    with caplog.at_level("WARNING", logger="fishbench"):
        last = _cli_fidelity(tmp_path / "not-read", profile, capsys)
    assert last == {**figures, "passes_gates": False}
    assert [r.getMessage() for r in caplog.records if r.name == "fishbench"] == [
        "gate failed: slow_kl=3 not <= 0.01",
        "gate failed: slow_top1=0.01 not >= 0.7",
    ]
