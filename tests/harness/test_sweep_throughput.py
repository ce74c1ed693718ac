"""The throughput objective and the VRAM bound on max_batch: selection by aggregate audio per
second under the real-time and first-audio gates, the exported profile's objective, and the perf
model refusing a candidate whose KV slots cannot fit the budget before it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from engine.errors import ConfigError
from engine.model.checkpoint import CheckpointFolder, load_codec_config
from engine.model.synthetic import S1_MINI_CONFIG
from engine.profile import EngineProfile, Hardware
from harness.sweep.compose import compose_config
from harness.sweep.config import QualityConf, SweepConf
from harness.sweep.export import export_profile
from harness.sweep.grid import base_knobs, build_trials, candidate_spec, trial_inputs
from harness.sweep.run import planning_hardware
from harness.sweep.screen import pick_confirmations
from harness.sweep.selection import Gates, select_winner
from harness.sweep.vram import VramBound
from harness.trial.record import BASELINE, CANDIDATE, OK, SCREEN, SKIPPED, TrialRecord

FAITHFUL = {
    "slow_kl": 1e-5,
    "fast_kl": 1e-5,
    "slow_top1": 0.99,
    "fast_top1": 0.99,
    "codec_snr_db": 60.0,
}


def conf(*overrides: str) -> SweepConf:
    return OmegaConf.to_object(compose_config(list(overrides)))


def trial(
    name: str,
    audio_s_per_s: float,
    rtf_max: float,
    ttfa_p95: float,
    *,
    latency: float = 1.0,
    concurrency: int = 1,
    kind: str = CANDIDATE,
    stage: str | None = None,
) -> TrialRecord:
    metrics = {
        "latency_p50_s": latency,
        "aggregate_audio_s_per_s": audio_s_per_s,
        "per_request_rtf_max": rtf_max,
        "concurrent_ttfa_p95_s": ttfa_p95,
        "concurrency": float(concurrency),
        "host_rss_mb": 900.0,
    }
    fidelity = FAITHFUL if kind == CANDIDATE else None
    return TrialRecord(name, kind, name, {}, OK, metrics=metrics, fidelity=fidelity, stage=stage)


BASELINE_TRIAL = trial("baseline", 0.4, 2.5, 1.5, latency=2.0, kind=BASELINE)
SINGLE = trial("max_batch=1", 1.1, 0.9, 0.3, latency=0.5)  # the fastest single request
BATCHED = trial("max_batch=4", 3.6, 0.8, 0.9, latency=0.6, concurrency=4)
PAST_SLO = trial("max_batch=8", 6.0, 0.95, 2.4, latency=0.6, concurrency=8)
BEHIND_REAL_TIME = trial("max_batch=8, int8", 7.0, 1.3, 1.2, latency=0.6, concurrency=8)
TRIALS = (BASELINE_TRIAL, SINGLE, BATCHED, PAST_SLO, BEHIND_REAL_TIME)
KEYS = ("aggregate_audio_s_per_s", "per_request_rtf_max", "concurrent_ttfa_p95_s")


def choose(*trials: TrialRecord, **quality):
    return select_winner(trials, Gates(QualityConf(**quality), None, wer_applicable=False))


def test_throughput_picks_the_most_audio_per_second_that_keeps_real_time_and_the_slo() -> None:
    result = choose(*TRIALS, objective="throughput")
    assert result.winner is BATCHED
    assert result.failures[SINGLE.name] == [] and result.failures[BATCHED.name] == []
    assert result.failures[PAST_SLO.name] == [
        "first audio p95 2.4 s at concurrency 8 > quality.ttfa_slo_s 2 s"
    ]
    assert result.failures[BEHIND_REAL_TIME.name] == [
        "slower than real time at concurrency 8: per_request_rtf_max 1.3 >= 1"
    ]
    assert "aggregate_audio_s_per_s (throughput objective)" in result.summary


def test_a_looser_slo_lets_the_faster_aggregate_win_and_latency_ignores_both_gates() -> None:
    assert choose(*TRIALS, objective="throughput", ttfa_slo_s=3.0).winner is PAST_SLO
    latency = choose(*TRIALS)  # the default objective: one request's p50, as before
    assert latency.winner is SINGLE
    assert latency.failures[PAST_SLO.name] == latency.failures[BEHIND_REAL_TIME.name] == []


def test_under_throughput_a_candidate_must_beat_the_baseline_aggregate() -> None:
    slower = trial("chunk_size=8", 0.3, 0.9, 0.5)
    result = choose(BASELINE_TRIAL, slower, objective="throughput")
    assert result.baseline_won
    assert result.failures[slower.name] == [
        "aggregate_audio_s_per_s 0.3 does not beat the baseline's 0.4"
    ]


def test_throughput_is_a_preset_and_an_unknown_objective_is_refused() -> None:
    quality = conf("quality=throughput").quality
    assert (quality.objective, quality.metric, quality.goal) == (
        "throughput",
        "aggregate_audio_s_per_s",
        "max",
    )
    assert quality.ttfa_slo_s == 2.0
    assert conf().quality.objective == "latency"
    with pytest.raises(ConfigError, match="quality.objective must be latency or throughput"):
        conf("quality.objective=speed")


def test_a_screen_past_the_slo_is_not_confirmed_under_throughput() -> None:
    screens = [
        trial(f"{t.name} (screen)", *(t.metrics[k] for k in KEYS), stage=SCREEN)
        for t in (SINGLE, BATCHED, PAST_SLO)
    ]
    verdicts = pick_confirmations(screens, conf("quality=throughput", "screen.keep=2"))
    assert verdicts["max_batch=4 (screen)"].confirm
    assert verdicts["max_batch=4 (screen)"].why.startswith("#1 of 2")
    assert not verdicts["max_batch=8 (screen)"].confirm
    assert "quality.ttfa_slo_s" in verdicts["max_batch=8 (screen)"].why


def test_the_export_records_the_objective_the_profile_won(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    winner = TrialRecord("max_batch=2", CANDIDATE, "h", {"max_batch": 2}, OK, metrics={})
    winner.metrics = dict(BATCHED.metrics)
    checkpoint = CheckpointFolder.open(tiny_checkpoint)
    _, active = export_profile(
        winner, Hardware.detect("cpu"), "cpu", checkpoint, None, tmp_path, "s", "throughput"
    )
    profile = EngineProfile.load(active)
    assert profile.max_batch == 2 and profile.provenance.objective == "throughput"
    assert profile.provenance.metrics["aggregate_audio_s_per_s"] == 3.6


RTX3060 = "hardware=rtx3060"  # 11,000 MB budget


def full_size_bound(budget_mb: float) -> VramBound:
    return VramBound.from_configs(budget_mb, S1_MINI_CONFIG, load_codec_config("modded_dac_vq"))


def test_kv_slots_over_the_vram_budget_are_refused_before_they_run() -> None:
    """Full-size s1-mini in fp32 with an 8,192-position cache: one request's engine holds about
    5.3 GB; four slots (plus the batch-1 cache) hold 9 caches of 0.9 GB, over 12 GB."""
    c = conf(RTX3060, "engine.precision=fp32", "engine.max_seq_len=8192")
    hw = planning_hardware(c.hardware)
    bound = full_size_bound(c.hardware.vram_budget_mb)
    inputs = trial_inputs(c, "ckpt")
    base = base_knobs(c)
    one = candidate_spec(base, {"max_batch": 1}, hw, inputs, bound)
    four = candidate_spec(base, {"max_batch": 4}, hw, inputs, bound)
    assert one.runs and one.status is None
    assert four.status == SKIPPED
    parts = bound.resident(EngineProfile.model_validate(four.knobs))
    single = bound.resident(EngineProfile.model_validate(one.knobs))
    assert parts.total / 2**20 > 11_000 > single.total / 2**20
    assert parts.kv_cache == 5 * single.kv_cache  # the batch-1 cache and 4 slots
    assert four.reason.startswith(
        f"the perf model's resident memory, {parts.total / 2**20:.0f} MB, exceeds "
        "hardware.vram_budget_mb 11000 MB"
    )
    assert "5 caches of 8192 positions at max_batch=4" in four.reason


def test_a_grid_over_max_batch_skips_only_what_overflows() -> None:
    c = conf(
        RTX3060,
        "engine.precision=fp32",
        "engine.max_seq_len=8192",
        "grid.points=[]",
        "+grid.axes.max_batch=[1,2,4,8]",
    )
    specs = build_trials(c, planning_hardware(c.hardware), "ckpt", full_size_bound(11_000))
    assert [(s.name, s.status) for s in specs[1:]] == [
        ("max_batch=1", None),
        ("max_batch=2", None),
        ("max_batch=4", SKIPPED),
        ("max_batch=8", SKIPPED),
    ]


def test_a_cpu_sweep_has_no_vram_bound(tiny_checkpoint: Path) -> None:
    assert VramBound.for_sweep(conf(), CheckpointFolder.open(tiny_checkpoint)) is None
    assert VramBound.for_sweep(conf(RTX3060), CheckpointFolder.open(tiny_checkpoint)) is not None


def test_the_bound_prices_a_batched_engine_as_its_tensors_count(tiny_checkpoint: Path) -> None:
    """Weights, KV caches (slots included) and tables of a real max_batch 2 engine, to the byte
    (the codec's share is the one a CUDA engine keeps, which a CPU engine does not show)."""
    from engine.engine import OptimizedFishSpeech

    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=2))
    try:
        checkpoint = CheckpointFolder.open(tiny_checkpoint)
        bound = VramBound.from_configs(1.0, checkpoint.config, checkpoint.codec_config())
        held, priced = engine.resident_bytes(), bound.resident(engine.active_profile)
        assert (priced.weights, priced.kv_cache, priced.tables) == (
            held.weights,
            held.kv_cache,
            held.tables,
        )
        assert bound.refusal(engine.active_profile, engine.hardware).startswith(
            "the perf model's resident memory"
        )
    finally:
        engine.close()
