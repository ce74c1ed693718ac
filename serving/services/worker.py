"""The threads that own the engine, fed by a bounded queue.

Every engine call (loading and warm-up included) happens on the worker's threads. A batch-1
engine is not thread safe and a GPU runs one generation well rather than several badly, so by
default one job runs at a time. An engine with ``max_batch > 1`` decodes up to that many requests
in one frame step: the worker then runs that many job threads, so requests beyond the engine's
slots wait here, where the queue bound, 429 and ``Retry-After`` apply, rather than inside the
engine. Request handlers submit a ``Job`` and read its results asynchronously; a full queue is
refused at once (429) instead of growing latency without bound, and a cancelled job stops at its
next chunk boundary.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Literal, TypeVar

from serving.errors import NotReady, QueueFull, Unavailable

log = logging.getLogger(__name__)

E = TypeVar("E")
WorkerState = Literal["loading", "ready", "failed", "stopped"]


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Job:
    """One unit of engine work: ``fn(engine, job)`` runs on the worker; items flow back async."""

    def __init__(self, fn: Callable[[Any, Job], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.enqueued_at = time.perf_counter()
        self.started_at: float | None = None
        self.result: Any = None
        self._loop = loop
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel = threading.Event()
        self._finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop this job at its next check (or skip it if still queued)."""
        self._cancel.set()

    def emit(self, item: Any) -> None:
        """Called on the worker thread; a consumer whose loop has gone away cancels the job."""
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:
            self._cancel.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        """Items the job emitted, ending when it finishes; its exception is re-raised here."""
        while not self._finished:
            item = await self._items.get()
            if isinstance(item, _Done):
                self._finished, self.result = True, item.value
            elif isinstance(item, _Failed):
                self._finished = True
                raise item.exc
            else:
                yield item

    async def wait(self) -> Any:
        """Drain the job and return what ``fn`` returned."""
        async for _ in self:
            pass
        return self.result


class EngineWorker(Generic[E]):
    """Loads the engine on one thread, then runs up to ``concurrency`` submitted jobs at once,
    taken in order from one queue of at most ``queue_size`` waiting jobs.

    ``concurrency`` is a number, or a function of the loaded engine (the service passes the
    active profile's ``max_batch``: the engine may lower what was asked for).
    """

    def __init__(
        self,
        load: Callable[[], E],
        queue_size: int,
        concurrency: int | Callable[[E], int] = 1,
    ) -> None:
        self.state: WorkerState = "loading"
        self.error: str | None = None
        self.engine: E | None = None
        self.queue_size = queue_size
        self.concurrency: int | None = concurrency if isinstance(concurrency, int) else None
        self._load = load
        self._concurrency = concurrency
        # Unbounded underneath: the bound is counted in ``submit``, so the stop marker never waits
        # for room.
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running: set[Job] = set()
        self._mean_job_s = 1.0
        self._threads = [threading.Thread(target=self._run, name="engine-worker", daemon=True)]

    def start(self) -> None:
        self._threads[0].start()

    @property
    def depth(self) -> int:
        """Jobs waiting plus those running."""
        with self._lock:
            return self._waiting + len(self._running)

    def retry_after_s(self) -> float:
        """A guess at when a slot frees up: the jobs ahead, shared by the job threads, times the
        mean job time."""
        return max(1.0, self.depth * self._mean_job_s / (self.concurrency or 1))

    def submit(self, fn: Callable[[E, Job], Any]) -> Job:
        """Queue ``fn``; refuse at once while loading or when the queue is full."""
        if self.state == "loading":
            raise NotReady("the model is still loading; retry shortly", retry_after_s=5)
        if self.state != "ready":
            raise Unavailable(f"the engine is not available: {self.error or self.state}")
        job = Job(fn, asyncio.get_running_loop())
        with self._lock:
            # Counted against every job thread, busy or not: jobs submitted together count as
            # waiting until a thread takes them, and must not be refused while threads are idle.
            full = self._waiting + len(self._running) >= self.queue_size + (self.concurrency or 1)
            if not full:
                self._waiting += 1
                self._queue.put(job)
        if full:
            raise QueueFull(
                f"the queue is full ({self.queue_size} waiting); retry later",
                retry_after_s=self.retry_after_s(),
            )
        return job

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the running and waiting jobs, then end the threads."""
        with self._lock:
            self.state = "stopped"
            running = list(self._running)
        for job in running:
            job.cancel()
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                self._skip(pending)
        self._queue.put(None)  # each job thread passes it on to the next as it ends
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        try:
            self.engine = self._load()
            count = self._job_threads(self.engine)
        except Exception as exc:
            log.exception("engine failed to load")
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        with self._lock:  # against ``stop``: it joins every thread started here
            if self.state != "loading":  # stopped while loading
                return
            self.concurrency, self.state = count, "ready"
            for index in range(1, count):
                thread = threading.Thread(
                    target=self._serve, name=f"engine-worker-{index}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        log.info("engine ready (%d job%s at a time)", count, "s" if count > 1 else "")
        self._serve()

    def _job_threads(self, engine: E) -> int:
        count = (
            self._concurrency if isinstance(self._concurrency, int) else self._concurrency(engine)
        )
        if count < 1:
            raise ValueError(f"the worker needs at least one job thread, got {count}")
        return count

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            self._execute(job)
        self._queue.put(None)

    def _skip(self, job: Job) -> None:
        """A waiting job that will not run: cancelled by its client, or the worker stopped."""
        with self._lock:
            self._waiting -= 1
        job.cancel()
        job.emit(_Done(None))

    def _execute(self, job: Job) -> None:
        with self._lock:
            # ``stop`` sets the state and lists the running jobs to cancel under this lock: a job
            # taken after that is skipped here, one taken before is among those it cancels.
            run = not job.cancelled and self.state == "ready"
            if run:
                self._waiting -= 1
                self._running.add(job)
        if not run:
            self._skip(job)
            return
        job.started_at = time.perf_counter()
        try:
            outcome: _Done | _Failed = _Done(job.fn(self.engine, job))
        except Exception as exc:
            outcome = _Failed(exc)
        elapsed = time.perf_counter() - job.started_at
        with self._lock:  # before the caller hears of the end, so it never sees itself in depth
            self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed
            self._running.discard(job)
        job.emit(outcome)
