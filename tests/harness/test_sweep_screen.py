"""Screen, then confirm: which screened candidates get the full trial, and in what order a
screened plan hands trials out (pure: records and specs made by hand, no trial runs)."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from harness.sweep.attempt import TrialContext, trial_job
from harness.sweep.compose import compose_config
from harness.sweep.config import SweepConf
from harness.sweep.grid import TrialSpec
from harness.sweep.screen import (
    ScreenedPlan,
    pick_confirmations,
    screen_scenario,
    screen_spec,
    screening_on,
)
from harness.sweep.store import SweepFolder
from harness.trial.record import (
    BASELINE,
    CANDIDATE,
    CONFIRM,
    FAILED,
    OK,
    SCREEN,
    SKIPPED,
    TrialRecord,
)


def conf(*overrides: str) -> SweepConf:
    return OmegaConf.to_object(compose_config(["screen.keep=2", *overrides]))


def screen(name: str, totals: list[float], *, noisy: str | None = None, status: str = OK):
    """A screening record whose repeats took ``totals`` seconds."""
    ordered = sorted(totals)
    metrics = {"latency_p50_s": ordered[len(ordered) // 2]} if totals else {}
    runs = [{"total_s": t} for t in totals]
    record = TrialRecord(f"{name} (screen)", CANDIDATE, name, {}, status, stage=SCREEN)
    record.metrics, record.runs, record.noisy = metrics, runs, noisy
    return record


def test_the_fastest_few_and_those_within_their_noise_are_confirmed() -> None:
    screens = [
        screen("slow", [2.0, 2.1, 2.2]),
        screen("best", [1.0, 1.1, 1.2]),
        screen("second", [1.3, 1.4, 1.5]),
        screen("overlaps-best", [1.15, 1.6, 1.7]),  # third by p50, but its fastest repeat is in
        screen("noisy", [3.0, 3.1, 3.2], noisy="other processes used 1.2 CPU cores"),
        screen("broken", [], status=FAILED),
    ]
    verdicts = pick_confirmations(screens, conf())
    confirmed = {name for name, v in verdicts.items() if v.confirm}
    assert confirmed == {
        "best (screen)",
        "second (screen)",
        "overlaps-best (screen)",
        "noisy (screen)",
    }
    assert verdicts["best (screen)"].why.startswith("#1 of 5")
    assert "within the noise of the fastest" in verdicts["overlaps-best (screen)"].why
    assert "NOISY" in verdicts["noisy (screen)"].why
    assert "outside its noise" in verdicts["slow (screen)"].why
    assert verdicts["broken (screen)"].why.startswith("FAILED")


def test_a_screen_over_the_vram_budget_is_not_confirmed() -> None:
    fat = screen("fat", [0.5, 0.5, 0.5])
    fat.metrics["peak_reserved_mb"] = 9000.0
    verdicts = pick_confirmations([fat, screen("lean", [1.0, 1.0, 1.0])], conf("hardware=rtx4060"))
    assert not verdicts["fat (screen)"].confirm
    assert "9000 MB > 7000" in verdicts["fat (screen)"].why
    assert verdicts["lean (screen)"].confirm


def spec(name: str, status: str | None = None) -> TrialSpec:
    kind = BASELINE if name == "baseline" else CANDIDATE
    return TrialSpec(name, kind, {"chunk_size": len(name)}, f"hash-{name}", status)


def test_a_screened_plan_screens_every_candidate_then_confirms_the_best_fastest_first() -> None:
    c = conf()
    plan = ScreenedPlan(
        [spec("baseline"), spec("a"), spec("b"), spec("odd", SKIPPED), spec("c")], c, "ckpt"
    )
    handed = [plan.next_spec() for _ in range(5)]
    assert [s.name for s in handed] == ["baseline", "a (screen)", "b (screen)", "odd", "c (screen)"]
    assert [s.stage for s in handed] == [None, SCREEN, SCREEN, None, SCREEN]
    assert handed[1].config_hash != "hash-a"  # the short scenario is part of its identity
    latencies = {"a (screen)": [3.0, 3.1, 3.2], "b (screen)": [2.0, 2.1, 2.2]}
    latencies["c (screen)"] = [1.0, 1.1, 1.2]
    for s in handed:
        if s.stage == SCREEN:
            plan.done(screen(s.name.removesuffix(" (screen)"), latencies[s.name]))
        else:
            plan.done(TrialRecord(s.name, s.kind, s.config_hash, {}, OK))
    confirms = [plan.next_spec(), plan.next_spec()]
    assert plan.next_spec() is None
    assert [(s.name, s.stage, s.config_hash) for s in confirms] == [
        ("c", CONFIRM, "hash-c"),  # the full trial, as an unscreened sweep would run it
        ("b", CONFIRM, "hash-b"),
    ]
    assert plan.essential(confirms[0])
    assert not plan.verdicts["a (screen)"].confirm


def test_out_of_time_while_screening_the_plan_still_confirms_what_it_screened() -> None:
    plan = ScreenedPlan([spec("baseline"), spec("a"), spec("b"), spec("c")], conf(), "ckpt")
    plan.next_spec()
    first = plan.next_spec()
    plan.done(screen("a", [1.0, 1.0, 1.0]))
    assert len(plan.reserve()) == 2  # time kept for the confirmations
    assert plan.drop(plan.next_spec()) == ["b", "c"]
    confirm = plan.next_spec()
    assert (confirm.name, confirm.stage) == ("a", CONFIRM) and first.name == "a (screen)"
    assert plan.essential(confirm) and plan.next_spec() is None


def test_screening_needs_enough_candidates_a_grid_and_a_local_launcher() -> None:
    assert not screening_on(conf(), 7) and screening_on(conf(), 8)
    assert screening_on(conf("screen.enabled=true"), 2)
    assert not screening_on(conf("screen.enabled=false"), 50)
    assert not screening_on(conf("search=optuna"), 50)
    assert not screening_on(conf("launcher=ray"), 50)


def test_a_screening_trial_runs_the_short_scenario_without_fidelity(tmp_path) -> None:
    c = conf("scenario=long", "screen.fixed_frames=32", "screen.repeats=4")
    short = screen_scenario(c)
    assert (short.fixed_frames, short.repeats, short.max_repeats) == (32, 4, 4)
    full = spec("a")
    ctx = TrialContext(c, SweepFolder(tmp_path), "ckpt", None, True, str(tmp_path / "ref.pt"))
    screened = screen_spec(full, c, "ckpt")
    job = trial_job(screened, ctx)
    assert job["scenario"]["fixed_frames"] == 32 and job["fidelity"] is False
    confirmed = trial_job(dataclasses.replace(full, stage=CONFIRM), ctx)
    assert confirmed["scenario"]["fixed_frames"] == 256 and confirmed["fidelity"] is True
