"""The engine worker with several job threads (``concurrency``, the service's MAX_BATCH) and with
one: jobs overlap exactly as far as the threads allow, and the queue bound, 429, cancellation,
``depth`` and ``stop`` count running jobs as well as waiting ones.

Overlap is proven with barriers and events (a job that needs another running at the same time to
finish), never with timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from serving.errors import QueueFull
from serving.services.worker import EngineWorker, Job

WAIT_S = 30.0  # how long a job waits for its partner before the test fails


async def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.01)


async def ready_worker(queue_size: int, concurrency: int) -> EngineWorker[object]:
    worker: EngineWorker[object] = EngineWorker(lambda: object(), queue_size, concurrency)
    worker.start()
    await until(lambda: worker.state == "ready", "the worker ready")
    return worker


def held(gate: threading.Event, ran: list[str], name: str) -> Callable[[object, Job], str]:
    """A job that waits for ``gate`` (the test's release), then records that it ran."""

    def fn(engine: object, job: Job) -> str:
        assert gate.wait(WAIT_S), "the test never released the job"
        ran.append(name)
        return name

    return fn


def test_two_jobs_run_at_the_same_time_on_two_job_threads() -> None:
    """Each job waits at a two-party barrier: both pass only if both are running at once (with
    one job thread the first would wait there alone and fail)."""
    meeting = threading.Barrier(2, timeout=WAIT_S)
    threads: list[str] = []

    def meet(engine: object, job: Job) -> int:
        threads.append(threading.current_thread().name)
        return meeting.wait()

    async def scenario() -> None:
        worker = await ready_worker(queue_size=1, concurrency=2)
        assert worker.concurrency == 2
        first, second = worker.submit(meet), worker.submit(meet)
        assert sorted([await first.wait(), await second.wait()]) == [0, 1]
        assert worker.depth == 0
        worker.stop()

    asyncio.run(scenario())
    assert len(set(threads)) == 2


def test_one_job_thread_runs_jobs_one_at_a_time_in_submission_order() -> None:
    """``concurrency=1`` (the default, MAX_BATCH=1) is the worker as it always was."""
    gate = threading.Event()
    lock = threading.Lock()
    active, most_active, order = [0], [0], []

    def work(name: str) -> Callable[[object, Job], None]:
        def fn(engine: object, job: Job) -> None:
            with lock:
                active[0] += 1
                most_active[0] = max(most_active[0], active[0])
            assert gate.wait(WAIT_S)
            order.append(name)
            with lock:
                active[0] -= 1

        return fn

    async def scenario() -> None:
        worker: EngineWorker[object] = EngineWorker(lambda: object(), queue_size=3)
        worker.start()
        await until(lambda: worker.state == "ready", "the worker ready")
        jobs = [worker.submit(work("a"))]
        await until(lambda: jobs[0].started_at is not None, "the first job started")
        jobs += [worker.submit(work(name)) for name in "bcd"]
        assert worker.depth == 4 and all(job.started_at is None for job in jobs[1:])
        gate.set()
        for job in jobs:
            await job.wait()
        worker.stop()

    asyncio.run(scenario())
    assert order == ["a", "b", "c", "d"] and most_active == [1]


def test_queue_bound_429_and_cancel_count_running_and_waiting_jobs() -> None:
    """Two running, one waiting (QUEUE_SIZE=1): the next is refused with a Retry-After; the
    waiting one, cancelled, is skipped and never runs; depth counts all three, then none."""
    gate = threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        worker = await ready_worker(queue_size=1, concurrency=2)
        running = [worker.submit(held(gate, ran, name)) for name in ("first", "second")]
        await until(lambda: all(job.started_at is not None for job in running), "both jobs started")
        waiting = worker.submit(held(gate, ran, "waiting"))
        assert worker.depth == 3
        with pytest.raises(QueueFull) as refused:
            worker.submit(held(gate, ran, "refused"))
        assert int(refused.value.headers["Retry-After"]) >= 1
        waiting.cancel()
        gate.set()
        assert sorted([await running[0].wait(), await running[1].wait()]) == ["first", "second"]
        assert await waiting.wait() is None and waiting.started_at is None
        assert worker.depth == 0
        again = worker.submit(held(gate, ran, "after"))  # the skipped job freed its place
        assert await again.wait() == "after"
        worker.stop()

    asyncio.run(scenario())
    assert sorted(ran) == ["after", "first", "second"]


def test_stop_cancels_every_running_job_skips_the_waiting_and_ends_every_thread() -> None:
    threads: list[threading.Thread] = []
    both_running = threading.Barrier(3, timeout=WAIT_S)  # two jobs and the test

    def until_cancelled(engine: object, job: Job) -> str:
        threads.append(threading.current_thread())
        both_running.wait()
        deadline = time.monotonic() + WAIT_S
        while not job.cancelled:  # as the engine asks between blocks of frames
            assert time.monotonic() < deadline, "stop never cancelled the running job"
            time.sleep(0.01)
        return "stopped"

    async def scenario() -> None:
        worker = await ready_worker(queue_size=2, concurrency=2)
        running = [worker.submit(until_cancelled) for _ in range(2)]
        waiting = worker.submit(until_cancelled)
        await asyncio.to_thread(both_running.wait)
        await asyncio.to_thread(worker.stop)
        assert [await job.wait() for job in running] == ["stopped", "stopped"]
        assert await waiting.wait() is None and waiting.started_at is None
        assert worker.state == "stopped" and worker.depth == 0

    asyncio.run(scenario())
    assert len(threads) == 2 and not any(thread.is_alive() for thread in threads)


def test_job_threads_follow_the_loaded_engine_and_a_count_below_one_fails_loading() -> None:
    """The service passes the active profile's ``max_batch``, read once the engine has loaded
    (the engine may lower what was asked)."""

    class Engine:
        def __init__(self, slots: int) -> None:
            self.slots = slots

    async def scenario(slots: int) -> EngineWorker[Engine]:
        worker: EngineWorker[Engine] = EngineWorker(
            lambda: Engine(slots), queue_size=1, concurrency=lambda engine: engine.slots
        )
        assert worker.concurrency is None  # not known before the engine is
        worker.start()
        await until(lambda: worker.state != "loading", "the worker loaded")
        worker.stop()
        return worker

    assert asyncio.run(scenario(3)).concurrency == 3
    failed = asyncio.run(scenario(0))
    assert failed.error == "ValueError: the worker needs at least one job thread, got 0"
