"""One soak: wait for the server, add a voice, run the load, report every interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from serving.soak.load import Result, run
from serving.soak.mix import REFERENCE_TEXT, mix, reference_wav
from serving.soak.report import Tick, format_tick, megabytes, summary, verdict


@dataclass(frozen=True)
class SoakConfig:
    url: str
    minutes: float = 10.0
    rate: float = 2.0  # requests started per second
    report_every_s: float = 60.0
    seed: int = 0
    api_key: str | None = None
    max_in_flight: int = 64
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.rate <= 0 or self.report_every_s <= 0:
            raise ValueError("minutes, rate and report interval must be positive")


@dataclass(frozen=True)
class SoakReport:
    ticks: list[Tick]
    results: list[Result]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> list[str]:
        return summary(self.ticks, self.results, self.failures)


async def _add_voice(client: httpx.AsyncClient, voice_id: str, audio: bytes) -> None:
    files = {"audio": ("voice.wav", audio, "audio/wav")}
    data = {"voice_id": voice_id, "transcript": REFERENCE_TEXT}
    response = await client.post("/voices", data=data, files=files)
    if response.status_code != 201:
        raise RuntimeError(f"could not save the soak voice: {response.status_code} {response.text}")


async def _ticks(
    config: SoakConfig,
    load: asyncio.Task[None],
    results: list[Result],
    rss: Callable[[], int | None],
    out: Callable[[str], None],
) -> list[Tick]:
    """A tick every interval while the load runs, and one for requests still ending after it."""
    started, ticks, seen = time.monotonic(), [], 0
    while not load.done():
        due = started + (len(ticks) + 1) * config.report_every_s
        await asyncio.wait({load}, timeout=max(0.0, due - time.monotonic()))
        if load.done() and seen == len(results):
            break
        ended, seen = results[seen:], len(results)
        ticks.append(Tick(len(ticks) + 1, time.monotonic() - started, rss(), ended))
        out(format_tick(ticks[-1]))
    return ticks


async def soak(
    config: SoakConfig, rss: Callable[[], int | None], out: Callable[[str], None] = print
) -> SoakReport:
    """Run ``config`` against its server; ``rss`` reads the server's memory (None if unknown)."""
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.max_in_flight)
    references = [reference_wav(seed) for seed in range(3)]
    voice_id = f"soak-{config.seed}-{int(time.time())}"
    async with httpx.AsyncClient(
        base_url=config.url, headers=headers, timeout=config.timeout_s, limits=limits
    ) as client:
        await _add_voice(client, voice_id, references[0])
        out(
            f"soak: {config.minutes:g} min at {config.rate:g} req/s against {config.url}; "
            f"server rss at start {megabytes(rss())}"
        )
        results: list[Result] = []
        try:
            load = asyncio.create_task(
                run(
                    client,
                    mix(references, voice_id),
                    config.rate,
                    config.minutes * 60,
                    config.seed,
                    config.max_in_flight,
                    results,
                )
            )
            ticks = await _ticks(config, load, results, rss, out)
            await load
        finally:
            await client.delete(f"/voices/{voice_id}")
    return SoakReport(ticks, results, verdict([t.rss_bytes for t in ticks], results))
