"""Open-loop load: requests start on a fixed timetable whether or not earlier ones have finished.

A closed loop (send, wait, send) slows down with the server and hides queueing; here a start that
comes later than planned (all connections busy) is counted as late instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from serving.services.synthesis import NO_AUDIO
from serving.soak.mix import Kind

LATE_S = 0.25  # a start this far behind its slot counts as late


@dataclass(frozen=True)
class Result:
    """One request's answer; ``problem`` says why it is wrong (None when right)."""

    kind: str
    bad: bool
    speech: bool
    finished_s: float  # since the soak started
    elapsed_s: float
    late_s: float
    status: int | None  # None: no HTTP answer (transport error)
    problem: str | None = None


def judge(kind: Kind, response: httpx.Response) -> str | None:
    """Why an answer is wrong: a 5xx, a bad request let through, a good one refused, a bad body.

    A 429 to a good request is the server saying it is busy, and a 422 saying the model ended
    speech at once (random weights do, now and then) is the model's answer: both are counted in
    the statuses, not failures.
    """
    status = response.status_code
    if status >= 500:
        return f"{status} on {kind.name}"
    if kind.bad:
        return kind.check(response) if 400 <= status < 500 else f"{status} on bad {kind.name}"
    if status == 429 or (kind.speech and status == 422 and NO_AUDIO in response.text):
        return None
    return kind.check(response) if status == 200 else f"{status} on {kind.name}"


async def send(
    client: httpx.AsyncClient, kind: Kind, rng: random.Random, started: float, late_s: float
) -> Result:
    request = kind.build(rng)
    begin = time.monotonic()
    try:
        response = await client.request(kind.method, kind.path, **request)
    except httpx.HTTPError as exc:
        now = time.monotonic()
        problem = f"transport error on {kind.name}: {type(exc).__name__}"
        return Result(
            kind.name, kind.bad, kind.speech, now - started, now - begin, late_s, None, problem
        )
    now = time.monotonic()
    status, problem = response.status_code, judge(kind, response)
    return Result(
        kind.name, kind.bad, kind.speech, now - started, now - begin, late_s, status, problem
    )


async def run(
    client: httpx.AsyncClient,
    kinds: list[Kind],
    rate: float,
    duration_s: float,
    seed: int,
    max_in_flight: int,
    results: list[Result],
) -> None:
    """Start request ``i`` at ``i / rate`` s for ``duration_s``, appending to ``results`` as each
    ends (so a reporter can read them while the soak runs); return once all have ended."""
    rng = random.Random(seed)
    weights = [k.weight for k in kinds]
    slots = asyncio.Semaphore(max_in_flight)
    started = time.monotonic()

    async def one(kind: Kind, due: float, request_rng: random.Random) -> None:
        async with slots:
            late_s = max(0.0, time.monotonic() - due)
            results.append(await send(client, kind, request_rng, started, late_s))

    tasks: list[asyncio.Task[None]] = []
    for index in range(int(duration_s * rate)):
        due = started + index / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        kind = rng.choices(kinds, weights)[0]
        tasks.append(asyncio.create_task(one(kind, due, random.Random(rng.random()))))
    await asyncio.gather(*tasks)
