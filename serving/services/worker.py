"""The one thread that owns the engine, fed by a bounded queue.

The engine is not thread safe and a GPU runs one generation well rather than several badly, so
every engine call (loading and warm-up included) happens on this thread. Request handlers submit a
``Job`` and read its results asynchronously; a full queue is refused at once (429) instead of
growing latency without bound, and a cancelled job stops at its next chunk boundary.
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
    """Loads the engine, then runs submitted jobs one at a time, in order."""

    def __init__(self, load: Callable[[], E], queue_size: int) -> None:
        self.state: WorkerState = "loading"
        self.error: str | None = None
        self.engine: E | None = None
        self.queue_size = queue_size
        self._load = load
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._current: Job | None = None
        self._mean_job_s = 1.0
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting plus the one running."""
        return self._queue.qsize() + (self._current is not None)

    def retry_after_s(self) -> float:
        """A guess at when a slot frees up: the queue ahead times the mean job time."""
        return max(1.0, self.depth * self._mean_job_s)

    def submit(self, fn: Callable[[E, Job], Any]) -> Job:
        """Queue ``fn``; refuse at once while loading or when the queue is full."""
        if self.state == "loading":
            raise NotReady("the model is still loading; retry shortly", retry_after_s=5)
        if self.state != "ready":
            raise Unavailable(f"the engine is not available: {self.error or self.state}")
        job = Job(fn, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"the queue is full ({self.queue_size} waiting); retry later",
                retry_after_s=self.retry_after_s(),
            ) from None
        return job

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the running and waiting jobs, then end the thread."""
        self.state = "stopped"
        if self._current is not None:
            self._current.cancel()
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending.cancel()
                pending.emit(_Done(None))
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            self.engine = self._load()
        except Exception as exc:
            log.exception("engine failed to load")
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        if self.state == "loading":
            self.state = "ready"
            log.info("engine ready")
        while (job := self._queue.get()) is not None:
            self._execute(job)

    def _execute(self, job: Job) -> None:
        if job.cancelled:
            job.emit(_Done(None))
            return
        self._current, job.started_at = job, time.perf_counter()
        try:
            job.emit(_Done(job.fn(self.engine, job)))
        except Exception as exc:
            job.emit(_Failed(exc))
        finally:
            elapsed = time.perf_counter() - job.started_at
            self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed
            self._current = None
