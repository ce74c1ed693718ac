"""Trial order and the time budget: earlier sweeps on the same hardware put what was fast first
and what was slow last; the baseline and one candidate always run; a fake clock drives it."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.sweep.grid import TrialSpec
from harness.sweep.plan import Budget, GridPlan, PastTrial, load_history, order_by_promise
from harness.sweep.store import SweepFolder
from harness.trial.record import BASELINE, CANDIDATE, OK, TrialRecord


def spec(name: str, kind: str = CANDIDATE) -> TrialSpec:
    return TrialSpec(name, kind, {}, name)


def record(name: str, p50: float, *, kind: str = CANDIDATE, noisy: str | None = None):
    r = TrialRecord(name, kind, name, {}, OK, metrics={"latency_p50_s": p50}, noisy=noisy)
    r.started_at, r.ended_at = 100.0, 100.0 + 10 * p50
    return r


def past_sweep(reports: Path, sweep_id: str, hardware: str, *records: TrialRecord) -> None:
    folder, lock = SweepFolder.open(reports, sweep_id, None)
    with lock:
        folder.save_state({"sweep_id": sweep_id})
        (folder.root / "config.yaml").write_text(yaml.safe_dump({"hardware": {"name": hardware}}))
        for r in records:
            folder.save_record(r)


def test_history_reads_speedups_per_hardware_and_ignores_noisy_figures(tmp_path: Path) -> None:
    past_sweep(
        tmp_path,
        "a",
        "rtx4060",
        record("baseline", 2.0, kind=BASELINE),
        record("int8", 1.0),
        record("chunk=8", 4.0),
        record("noisy", 0.5, noisy="other processes used 1.2 CPU cores"),
    )
    past_sweep(tmp_path, "b", "cpu", record("baseline", 2.0, kind=BASELINE), record("int8", 8.0))
    history = load_history(tmp_path, "rtx4060", exclude="now")
    assert history["int8"] == PastTrial(speedup=2.0, wall_s=10.0)
    assert history["chunk=8"].speedup == 0.5
    assert history["noisy"].speedup is None
    assert load_history(tmp_path, "rtx4060", exclude="a") == {}


def test_order_is_baseline_then_known_fast_then_untried_then_known_slow() -> None:
    specs = [spec("baseline", BASELINE), spec("slow"), spec("new-1"), spec("fast"), spec("new-2")]
    history = {
        "slow": PastTrial(0.8, 30.0),
        "fast": PastTrial(1.9, 30.0),
        "baseline": PastTrial(1.0, 5.0),
    }
    ordered = [s.name for s in order_by_promise(specs, history)]
    assert ordered == ["baseline", "fast", "new-1", "new-2", "slow"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_always_runs_two_then_stops_when_the_next_would_overrun() -> None:
    clock = Clock()
    budget = Budget(1.0, clock)  # 60 s
    assert budget.allows(1e6)
    clock.now = 100.0  # the baseline alone overran the budget
    budget.ran(100.0)
    assert budget.allows(1e6)  # the first candidate still runs
    budget.ran(20.0)
    assert not budget.allows(1.0)
    assert budget.allows(1e6, essential=True)  # a screened sweep's first confirmation
    assert budget.left() == 0.0


def test_budget_fits_a_predicted_time_into_what_is_left() -> None:
    clock = Clock()
    budget = Budget(2.0, clock)  # 120 s
    budget.ran(30.0)
    budget.ran(30.0)
    clock.now = 60.0
    assert budget.allows(55.0)
    assert not budget.allows(65.0)
    assert budget.left() == 60.0


def test_no_budget_never_stops_and_grid_plan_hands_out_in_order() -> None:
    budget = Budget(None)
    for _ in range(5):
        budget.ran(1e6)
    assert budget.allows(1e9) and budget.left() is None
    plan = GridPlan([spec("baseline", BASELINE), spec("a"), spec("b"), spec("c")])
    assert plan.next_spec().name == "baseline"
    assert plan.next_spec().name == "a"
    assert (plan.asked_count, plan.remaining()) == (1, ["b", "c"])
    assert [s.name for s in plan.upcoming()] == ["b", "c"]
    assert plan.drop(plan.next_spec()) == ["b", "c"] and plan.next_spec() is None
