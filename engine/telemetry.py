"""Per-request measurements: stage timings, peak memory, and NVML utilization/energy sampled in a
background thread. On CPU the GPU figures are None (reported as absent, never as zero)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psutil
import torch

from engine import machine

log = logging.getLogger(__name__)

MISSING = "n/a"
# What NVML counts for a process beyond torch's reserved pool: the CUDA context, cuBLAS / cuDNN
# workspaces and loaded kernel images (a few hundred MB; more with many libraries loaded).
CONTEXT_ALLOWANCE_BYTES = 2 * 2**30


@functools.cache
def _note_once(message: str) -> None:
    """Log a fallback the first time it happens, not on every 20 ms sample."""
    log.info(message)


def figure(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    """A measurement as text, or ``n/a`` where it was not measured (absent, never zero)."""
    return MISSING if value is None else format(value, spec) + unit


def summarize(values: Sequence[float]) -> dict[str, float]:
    """The one summary of repeated measurements every report uses: count, mean, min, max and the
    p50 / p95 percentiles by linear interpolation (numpy's default: p50 of an even count is the
    mean of the middle two). Empty input gives an empty summary, not zeros."""
    if not len(values):
        return {}
    data = np.asarray(values, dtype=np.float64)
    return {
        "count": float(data.size),
        "mean": float(data.mean()),
        "min": float(data.min()),
        "max": float(data.max()),
        "p50": float(np.percentile(data, 50)),
        "p95": float(np.percentile(data, 95)),
    }


@dataclass
class SynthesisReport:
    """What one synthesis cost. Times in seconds, memory in MB."""

    encode_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    codec_s: float = 0.0
    total_s: float = 0.0
    ttfa_s: float | None = None
    frames: int = 0
    audio_s: float = 0.0
    reference_cache_hit: bool = False
    semantic_cache_hit: bool = False
    prefix_cache_hit: bool = False
    kv_bucket: int = 0
    queue_s: float = 0.0  # waiting for a free decoding slot (batched engines)
    batch_occupancy: float = 1.0  # mean requests decoding together during this one's frames
    first_chunk_audio_s: float = 0.0  # a stream's first chunk, which arrived at ttfa_s
    last_chunk_s: float | None = None  # when a stream's last chunk was ready, from the start
    peak_allocated_mb: float | None = None
    peak_reserved_mb: float | None = None
    nvml_process_mb: float | None = None
    gpu_util_pct: float | None = None
    energy_j: float | None = None
    host_rss_mb: float = 0.0

    @property
    def frames_per_s(self) -> float | None:
        return self.frames / self.decode_s if self.decode_s > 0 else None

    @property
    def rtf(self) -> float | None:
        return self.total_s / self.audio_s if self.audio_s > 0 else None

    @property
    def stream_rtf(self) -> float | None:
        """A stream's seconds from its first chunk to its last over the audio the later chunks
        carry: at or below 1, a listener who starts playing at the first chunk is never
        starved (on average over the stream). None for one-shot or single-chunk requests."""
        later = self.audio_s - self.first_chunk_audio_s
        if self.last_chunk_s is None or self.ttfa_s is None or later <= 0:
            return None
        return (self.last_chunk_s - self.ttfa_s) / later

    def stage_ms_per_frame(self) -> dict[str, float | None]:
        """Prefill, decode and codec milliseconds per generated frame: where a frame's time goes
        (real time needs their sum under 46.4 ms, one frame of audio)."""
        stages = {"prefill": self.prefill_s, "decode": self.decode_s, "codec": self.codec_s}
        return {
            f"{name}_ms_per_frame": 1000.0 * seconds / self.frames if self.frames else None
            for name, seconds in stages.items()
        }

    @property
    def j_per_audio_s(self) -> float | None:
        return (
            self.energy_j / self.audio_s if self.energy_j is not None and self.audio_s > 0 else None
        )

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            frames_per_s=self.frames_per_s,
            rtf=self.rtf,
            stream_rtf=self.stream_rtf,
            j_per_audio_s=self.j_per_audio_s,
            **self.stage_ms_per_frame(),
        )
        return data


@dataclass(frozen=True)
class OwnProcess:
    """This process in NVML's process list: its NVML pid, or None and why it cannot be told."""

    pid: int | None
    how: str


def find_own_process(
    procs: Sequence[Any], reserved_bytes: int, pid: int | None = None
) -> OwnProcess:
    """Which of NVML's running processes (``pid``, ``usedGpuMemory``) is this one.

    NVML reports PIDs of the host's PID namespace: inside a container ``os.getpid()`` is another
    number and never matches, and this process's own GPU use would count as another process's.
    Then it is recognised by memory instead: NVML's figure is torch's reserved pool plus the CUDA
    context, so the one process within ``CONTEXT_ALLOWANCE_BYTES`` above ``reserved_bytes`` is
    this one. None or several such processes is "unknown", never a guess.
    """
    pid = os.getpid() if pid is None else pid
    if any(p.pid == pid for p in procs):
        return OwnProcess(pid, "pid")
    if reserved_bytes <= 0:
        return OwnProcess(None, "NVML lists no PID of this process, which holds no GPU memory yet")
    fits = [
        p.pid
        for p in procs
        if p.usedGpuMemory
        and reserved_bytes <= p.usedGpuMemory <= reserved_bytes + CONTEXT_ALLOWANCE_BYTES
    ]
    if len(fits) == 1:
        return OwnProcess(fits[0], "memory")
    return OwnProcess(
        None,
        f"NVML lists no PID of this process (a container's PID namespace?) and {len(fits)} of its "
        f"{len(procs)} processes match this process's {reserved_bytes / 2**20:.0f} MB",
    )


class NvmlSampler:
    """Samples GPU busy %, process memory and energy while a block runs (no-op without NVML)."""

    def __init__(self, device: torch.device, period_s: float = 0.02) -> None:
        self.device = device
        self.period_s = period_s
        self.handle = None
        self.samples: list[float] = []
        self.process_mb: float | None = None
        self.energy_j: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            try:
                self.nvml = machine.nvml()
                self.handle = machine.nvml_handle(self.nvml, device)
            except Exception as exc:
                log.info("NVML unavailable: %s", exc)

    def _energy_mj(self) -> int | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as exc:  # pre-Volta GPUs and some drivers have no energy counter
            _note_once(f"NVML has no energy counter here ({exc}); energy is reported as n/a")
            return None

    def _process_mb(self) -> float | None:
        try:
            reserved = torch.cuda.memory_reserved(self.device)
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception as exc:  # e.g. no permission to list processes in a container
            _note_once(f"NVML cannot list processes ({exc}); process memory is reported as n/a")
            return None
        own = find_own_process(procs, reserved)
        if own.pid is None:
            _note_once(f"process GPU memory is reported as n/a: {own.how}")
            return None
        used = [p.usedGpuMemory for p in procs if p.pid == own.pid and p.usedGpuMemory]
        return used[0] / 2**20 if used else None

    def _sample(self) -> bool:
        """One utilization and process-memory sample; False once NVML stops answering."""
        try:
            self.samples.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
        except Exception as exc:
            log.warning(
                "NVML stopped answering after %d samples; GPU utilization for this request "
                "uses those only: %s",
                len(self.samples),
                exc,
            )
            return False
        mb = self._process_mb()
        if mb is not None:
            self.process_mb = max(self.process_mb or 0.0, mb)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.period_s) and self._sample():
            pass

    def __enter__(self) -> NvmlSampler:
        if self.handle is not None:
            self._energy_start = self._energy_mj()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()  # a request shorter than one period still gets its figures
        end = self._energy_mj()
        if end is not None and self._energy_start is not None:
            self.energy_j = (end - self._energy_start) / 1000.0

    @property
    def utilization_pct(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class Measure:
    """Context manager filling a report's memory and NVML fields around a synthesis."""

    def __init__(self, device: torch.device, report: SynthesisReport) -> None:
        self.device = device
        self.report = report
        self.sampler = NvmlSampler(device)

    def __enter__(self) -> Measure:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sampler.__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.report.peak_allocated_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.report.peak_reserved_mb = torch.cuda.max_memory_reserved(self.device) / 2**20
        self.report.total_s = time.perf_counter() - self.start
        self.sampler.__exit__()
        self.report.gpu_util_pct = self.sampler.utilization_pct
        self.report.energy_j = self.sampler.energy_j
        self.report.nvml_process_mb = self.sampler.process_mb
        self.report.host_rss_mb = psutil.Process().memory_info().rss / 2**20
