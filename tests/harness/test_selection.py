"""Selection: the gates and the tie rule, on hand-made trial records."""

from __future__ import annotations

import pytest

from engine.measure.fidelity import FIDELITY_GATES
from harness.sweep.config import QualityConf
from harness.sweep.selection import Gates, select_winner
from harness.trial.record import BASELINE, CANDIDATE, FAILED, OK, SKIPPED, TrialRecord

FAITHFUL = {
    "slow_kl": 1e-5,
    "fast_kl": 1e-5,
    "slow_top1": 0.99,
    "fast_top1": 0.99,
    "codec_snr_db": 60.0,
}


def trial(
    name: str,
    latency: float,
    reserved_mb: float | None = None,
    *,
    kind: str = CANDIDATE,
    status: str = OK,
    fidelity: dict[str, float] | None = FAITHFUL,
    wer: float | None = None,
    reason: str | None = None,
) -> TrialRecord:
    metrics = {"latency_p50_s": latency, "peak_reserved_mb": reserved_mb, "host_rss_mb": 900.0}
    return TrialRecord(
        name,
        kind,
        name,
        {},
        status,
        reason,
        metrics=metrics,
        fidelity=fidelity if kind == CANDIDATE else None,
        wer=wer,
    )


def baseline(latency: float = 2.0, wer: float | None = None) -> TrialRecord:
    return trial("baseline", latency, 3000.0, kind=BASELINE, wer=wer)


def choose(*trials: TrialRecord, budget: float | None = None, wer: bool = False, **quality):
    return select_winner(trials, Gates(QualityConf(**quality), budget, wer))


def test_fastest_passing_candidate_wins() -> None:
    result = choose(baseline(), trial("a", 1.0, 2000.0), trial("b", 0.5, 2000.0))
    assert result.winner.name == "b"
    assert result.failures == {"a": [], "b": []}


def test_fidelity_gate_excludes_an_unfaithful_candidate() -> None:
    broken = {**FAITHFUL, "slow_kl": FIDELITY_GATES["slow_kl_max"] * 10}
    result = choose(baseline(), trial("fast-but-wrong", 0.2, fidelity=broken), trial("ok", 1.0))
    assert result.winner.name == "ok"
    assert any("slow_kl" in reason for reason in result.failures["fast-but-wrong"])


def test_unmeasured_fidelity_fails_the_gate() -> None:
    result = choose(baseline(), trial("a", 0.5, fidelity=None))
    assert result.baseline_won
    assert "fidelity not measured" in result.failures["a"][0]


def test_fidelity_thresholds_can_be_overridden() -> None:
    slightly_off = {**FAITHFUL, "codec_snr_db": 25.0}
    assert choose(baseline(), trial("a", 0.5, fidelity=slightly_off)).winner.name == "a"
    strict = choose(
        baseline(),
        trial("a", 0.5, fidelity=slightly_off),
        fidelity_gates={"codec_snr_db_min": 30.0},
    )
    assert strict.baseline_won


def test_vram_budget_gate() -> None:
    result = choose(
        baseline(), trial("big", 0.3, 9000.0), trial("small", 0.6, 5000.0), budget=7000.0
    )
    assert result.winner.name == "small"
    assert "budget" in result.failures["big"][0]


def test_wer_gate_applies_only_when_wer_is_meaningful() -> None:
    trials = (baseline(wer=0.02), trial("mumbles", 0.3, wer=0.2), trial("clear", 0.6, wer=0.03))
    assert choose(*trials, wer=True, max_wer_delta=0.05).winner.name == "clear"
    assert choose(*trials, wer=False).winner.name == "mumbles"


def test_missing_wer_fails_when_wer_is_meaningful() -> None:
    result = choose(baseline(wer=None), trial("a", 0.3, wer=0.01), wer=True)
    assert result.baseline_won
    assert "WER not available" in result.failures["a"][0]


def test_tie_goes_to_lower_vram() -> None:
    result = choose(
        baseline(), trial("fast-big", 1.000, 6000.0), trial("tied-small", 1.015, 4000.0)
    )
    assert result.winner.name == "tied-small"


def test_outside_the_tie_tolerance_speed_wins() -> None:
    result = choose(baseline(), trial("fast-big", 1.0, 6000.0), trial("slow-small", 1.1, 4000.0))
    assert result.winner.name == "fast-big"


def test_tie_uses_host_rss_when_vram_is_not_available() -> None:
    a, b = trial("a", 1.0), trial("b", 1.01)
    a.metrics["host_rss_mb"], b.metrics["host_rss_mb"] = 1200.0, 1000.0
    assert choose(baseline(), a, b).winner.name == "b"


def test_candidate_must_beat_the_baseline() -> None:
    result = choose(baseline(latency=1.0), trial("slower", 1.5))
    assert result.baseline_won
    assert "does not beat the baseline" in result.failures["slower"][0]
    assert (
        choose(baseline(latency=1.0), trial("slower", 1.5), must_beat_baseline=False).winner.name
        == "slower"
    )


def test_baseline_wins_when_nothing_passes_and_reasons_are_kept() -> None:
    result = choose(
        baseline(),
        trial(
            "crashed",
            0.1,
            status=FAILED,
            reason="RuntimeError: CUDA out of memory\n\nTraceback (most recent call last):\n...",
        ),
        trial(
            "int4",
            0.1,
            status=SKIPPED,
            reason="quantization: int4 -> int8 (int4/nf4 kernels need CUDA)",
        ),
        trial("noisy", 0.1, fidelity={**FAITHFUL, "codec_snr_db": 3.0}),
    )
    assert result.baseline_won
    assert result.failures["crashed"] == ["FAILED: RuntimeError: CUDA out of memory"]
    assert result.failures["int4"][0].startswith("SKIPPED: quantization: int4 -> int8")
    assert "codec_snr_db" in result.failures["noisy"][0]
    assert "baseline wins" in result.summary


def test_no_winner_when_even_the_baseline_failed() -> None:
    broken = trial("baseline", 1.0, kind=BASELINE, status=FAILED, reason="timed out after 900 s")
    result = choose(broken, trial("a", 0.5, status=FAILED, reason="boom"))
    assert result.winner is None


def test_unknown_fidelity_gate_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fidelity gates"):
        choose(baseline(), trial("a", 0.5), fidelity_gates={"slow_kl_maximum": 1.0})


def with_interval(record: TrialRecord, low: float, high: float) -> TrialRecord:
    record.metrics.update(latency_p50_s_ci_low=low, latency_p50_s_ci_high=high)
    return record


def test_a_noisy_candidate_cannot_win_unless_allowed() -> None:
    noisy = trial("noisy", 0.5, 2000.0)
    noisy.noisy = "other processes used 1.20 CPU cores (limit 0.5)"
    quiet = trial("quiet", 1.0, 2000.0)
    result = choose(baseline(), noisy, quiet)
    assert result.winner.name == "quiet"
    assert result.failures["noisy"][0].startswith("NOISY: other processes used 1.20 CPU cores")
    allowed = select_winner([baseline(), noisy, quiet], Gates(QualityConf(), None, False, True))
    assert allowed.winner.name == "noisy"


def test_overlapping_intervals_are_a_tie_that_memory_breaks() -> None:
    fast = with_interval(trial("fast-big", 1.00, 6000.0), 0.90, 1.10)
    slower = with_interval(trial("slower-small", 1.08, 4000.0), 1.05, 1.12)
    result = choose(baseline(), fast, slower, tie_tolerance=0.0)
    assert result.winner.name == "slower-small"
    assert "overlapping 95 % intervals" in result.tie
    assert "fast-big" in result.tie


def test_separate_intervals_let_the_faster_win_even_within_the_tolerance() -> None:
    fast = with_interval(trial("fast-big", 1.00, 6000.0), 0.99, 1.01)
    slower = with_interval(trial("slower-small", 1.015, 4000.0), 1.012, 1.02)
    result = choose(baseline(), fast, slower)
    assert result.winner.name == "fast-big"
    assert result.tie is None
