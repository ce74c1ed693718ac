"""Speech requests: text chunks generated in order on the worker, audio streamed back as it comes.

The worker side (``run_synthesis``) walks the chunks with seeds ``seed, seed + 1, ...``; the engine
asks ``job.cancelled`` after every block of frames, so a cancelled job frees the worker within one
block. The async side (``SynthesisStream``) waits for the first audio before a response starts,
so a request that fails early still gets a 4xx, and it records what the request cost in the
metrics when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.audio_io import SAMPLE_RATE
from engine.caches import ReferenceCodeCache
from engine.engine import OptimizedFishSpeech
from engine.errors import GenerationCancelled, RequestError
from serving.services.audio import change_speed
from serving.services.worker import EngineWorker, Job

log = logging.getLogger(__name__)


NO_AUDIO = (
    "the model ended speech at once and produced no audio for this text; rephrase it or send "
    "another seed"
)


@dataclass(frozen=True)
class SynthesisSpec:
    """Everything the worker needs for one request, validated beforehand."""

    chunks: list[str]
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int
    reference_audio: np.ndarray | None = None
    reference_text: str | None = None
    reference_codes: torch.Tensor | None = None
    speed: float = 1.0
    chunked_decode: bool = False
    release_memory: bool = False
    route: str = "tts"


@dataclass
class _ChunkReport:
    report: dict[str, Any]


def _prime_reference(engine: OptimizedFishSpeech, spec: SynthesisSpec) -> None:
    """Put a saved voice's codes in the engine's cache so it skips re-encoding the audio."""
    if spec.reference_codes is None or spec.reference_audio is None:
        return
    key = ReferenceCodeCache.key_for(np.ascontiguousarray(spec.reference_audio).tobytes())
    if engine.reference_cache.get(key) is None:
        engine.reference_cache.put(key, spec.reference_codes)


def _chunk_audio(
    engine: OptimizedFishSpeech, spec: SynthesisSpec, index: int, job: Job
) -> Iterator[np.ndarray]:
    kwargs = dict(
        should_stop=lambda: job.cancelled,
        reference_audio=spec.reference_audio,
        reference_text=spec.reference_text,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed + index,
    )
    if spec.chunked_decode:
        yield from engine.synthesize_stream(spec.chunks[index], **kwargs)
    else:
        yield engine.synthesize(spec.chunks[index], **kwargs)


def run_synthesis(engine: OptimizedFishSpeech, spec: SynthesisSpec, job: Job) -> None:
    """Worker side: emit float32 audio arrays and one report per text chunk.

    A cancelled job stops within one block of frames, also inside a whole-file generation.
    """
    _prime_reference(engine, spec)
    try:
        for index in range(len(spec.chunks)):
            pieces = _chunk_audio(engine, spec, index, job)
            held: list[np.ndarray] = []
            for piece in pieces:
                if job.cancelled:
                    pieces.close()
                    return
                if spec.speed == 1.0:
                    job.emit(piece)
                else:  # stretch whole sentences: the phase vocoder would smear chunk joins
                    held.append(piece)
            if held:
                job.emit(change_speed(np.concatenate(held), spec.speed))
            job.emit(_ChunkReport(engine.last_report.as_dict()))
    except GenerationCancelled as stopped:
        log.info("generation cancelled: %s", stopped)
    finally:
        if spec.release_memory and engine.device.type == "cuda":
            torch.cuda.empty_cache()  # hand cached blocks back so other processes can use them


@dataclass
class RequestStats:
    """What one request cost, end to end (queue wait included) and per engine call."""

    received_at: float
    sample_rate: int
    seed: int
    route: str = "tts"
    queued_at: float | None = None
    started_at: float | None = None  # a job thread took it; None if it never ran
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    finished_at: float | None = None
    audio_samples: int = 0
    first_chunk_samples: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.received_at

    @property
    def ttfa_s(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.received_at

    @property
    def queue_wait_s(self) -> float | None:
        """Queued until a job thread took it, plus the engine's own waits for a free decoding
        slot: what more ``max_batch`` (or replicas) would save."""
        if self.queued_at is None or self.started_at is None:
            return None
        slots = sum(float(r.get("queue_s") or 0.0) for r in self.reports)
        return self.started_at - self.queued_at + slots

    @property
    def decoded(self) -> list[dict[str, Any]]:
        """Reports of the chunks the decoder generated (a semantic cache hit decodes nothing)."""
        return [r for r in self.reports if r.get("frames") and not r.get("semantic_cache_hit")]

    @property
    def frames_per_s(self) -> float | None:
        """This request's frames per second of decoding (shared frame steps count whole)."""
        decode_s = sum(float(r.get("decode_s") or 0.0) for r in self.decoded)
        frames = sum(int(r["frames"]) for r in self.decoded)
        return frames / decode_s if decode_s > 0 else None

    @property
    def batch_occupancy(self) -> list[float]:
        """Per decoded chunk: the mean number of requests decoding together during its frames."""
        return [float(r.get("batch_occupancy") or 1.0) for r in self.decoded]

    @property
    def audio_s(self) -> float:
        return self.audio_samples / self.sample_rate

    @property
    def compute_s(self) -> float:
        return sum(float(r.get("total_s") or 0.0) for r in self.reports)

    @property
    def rtf(self) -> float | None:
        return self.compute_s / self.audio_s if self.audio_s > 0 and self.reports else None

    @property
    def stream_rtf(self) -> float | None:
        """Seconds from the first audio chunk to the last over the audio after the first: at or
        below 1, playback started at the first chunk never runs dry (on average)."""
        later = (self.audio_samples - self.first_chunk_samples) / self.sample_rate
        if self.first_audio_at is None or self.last_audio_at is None or later <= 0:
            return None
        return (self.last_audio_at - self.first_audio_at) / later

    @property
    def stage_ms_per_frame(self) -> dict[str, float | None]:
        """Prefill, decode and codec milliseconds per generated frame over the decoded chunks."""
        frames = sum(int(r["frames"]) for r in self.decoded)
        return {
            stage: 1000.0 * sum(float(r.get(f"{stage}_s") or 0.0) for r in self.decoded) / frames
            if frames
            else None
            for stage in ("prefill", "decode", "codec")
        }

    @property
    def peak_vram_mb(self) -> float | None:
        values = [
            r["peak_allocated_mb"] for r in self.reports if r.get("peak_allocated_mb") is not None
        ]
        return max(values) if values else None

    @property
    def gpu_util_pct(self) -> float | None:
        values = [r["gpu_util_pct"] for r in self.reports if r.get("gpu_util_pct") is not None]
        return statistics.fmean(values) if values else None

    @property
    def frames(self) -> int:
        return sum(int(r.get("frames") or 0) for r in self.reports)

    def summary(self) -> dict[str, Any]:
        occupancy = self.batch_occupancy
        return {
            "latency_ms": _ms(self.latency_s),
            "ttfa_ms": _ms(self.ttfa_s),
            "queue_wait_ms": _ms(self.queue_wait_s),
            "rtf": self.rtf,
            "stream_rtf": self.stream_rtf,
            "stage_ms_per_frame": self.stage_ms_per_frame,
            "audio_s": self.audio_s,
            "frames": self.frames,
            "frames_per_s": self.frames_per_s,
            "batch_occupancy": statistics.fmean(occupancy) if occupancy else None,
            "chunks": len(self.reports),
            "peak_vram_mb": self.peak_vram_mb,
            "gpu_util_pct": self.gpu_util_pct,
            "seed": self.seed,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


OnEnd = Callable[[RequestStats, str], None]


class SynthesisStream:
    """The audio of one request as the worker produces it."""

    def __init__(self, job: Job, stats: RequestStats, on_end: OnEnd, text: str = "") -> None:
        self.job = job
        self.stats = stats
        self.text = text  # the spoken form being said
        self._on_end = on_end
        self._items = aiter(job)
        self._first: np.ndarray | None = None
        self._ended = False

    async def _next_audio(self) -> np.ndarray | None:
        async for item in self._items:
            if isinstance(item, _ChunkReport):
                self.stats.reports.append(item.report)
                continue
            if not len(item):
                continue  # a text chunk whose speech ended at once
            self.stats.last_audio_at = time.perf_counter()
            if self.stats.first_audio_at is None:
                self.stats.first_audio_at = self.stats.last_audio_at
                self.stats.first_chunk_samples = len(item)
            self.stats.audio_samples += len(item)
            return item
        return None

    async def begin(self) -> SynthesisStream:
        """Wait for the first audio so errors surface before any response bytes are sent."""
        try:
            self._first = await self._next_audio()
        except asyncio.CancelledError:
            self.close(outcome="cancelled")
            raise
        except Exception:
            self.close(outcome="error")
            raise
        if self._first is None:  # a 422, as any RequestError the engine raises: an error
            self.close(outcome="error")
            raise RequestError(NO_AUDIO)
        return self

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        """Audio arrays in order; closing early cancels the job on the worker."""
        outcome = "cancelled"
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield first
            while (audio := await self._next_audio()) is not None:
                yield audio
            outcome = "ok"
        except Exception:
            outcome = "error"
            raise
        finally:
            self.close(outcome=outcome)

    async def collect(self) -> np.ndarray:
        """All audio, concatenated (non-streaming responses)."""
        parts = [audio async for audio in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def close(self, outcome: str = "cancelled") -> None:
        """End the request once: cancel the job unless it completed, and record the outcome."""
        if self._ended:
            return
        self._ended = True
        if outcome != "ok":
            self.job.cancel()
        self.stats.finished_at = time.perf_counter()
        self.stats.started_at = self.job.started_at
        self._on_end(self.stats, outcome)


async def start_synthesis(
    worker: EngineWorker[OptimizedFishSpeech],
    spec: SynthesisSpec,
    received_at: float,
    on_end: OnEnd,
) -> SynthesisStream:
    """Queue ``spec`` on the worker and wait for its first audio."""
    job = worker.submit(lambda engine, job: run_synthesis(engine, spec, job))
    stats = RequestStats(
        received_at=received_at,
        sample_rate=SAMPLE_RATE,
        seed=spec.seed,
        route=spec.route,
        queued_at=job.enqueued_at,
    )
    return await SynthesisStream(job, stats, on_end, " ".join(spec.chunks)).begin()
