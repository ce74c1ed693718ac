"""What else used the machine while a trial was timed: other processes' CPU, and GPU where NVML is.

optimum-benchmark refuses to run when another process holds the GPU; a desktop user cannot close
everything, so a trial is measured anyway and its disturbance recorded beside its figures. The
watch runs inside the trial's own process around its timed repeats only (compile and load may be
disturbed without harm), and counts as "ours" this process, its children (compile workers) and
the sweep process that spawned it; everything else is another process.

CPU: busy time of the CPUs this process may run on (``/proc/stat`` via psutil, steal included: a
VM neighbour is a disturbance too) minus our processes' CPU time, over the window's wall time.
GPU: NVML's per-process utilisation samples and running-process list, plus clocks and temperature
(a throttled GPU is another way for figures to drift). NVML names processes by the host's PIDs; in a
container this process is found by its memory instead (``engine.telemetry.find_own_process``), and
where it cannot be told apart the GPU side is "unknown" and judges nothing, rather than counting
the trial's own GPU use as another process's and marking every trial NOISY.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from engine.telemetry import find_own_process

log = logging.getLogger(__name__)
TOP_OFFENDERS = 3


def _busy_seconds(cpus: list[int]) -> float:
    per_cpu = psutil.cpu_times(percpu=True)
    return sum(
        sum(per_cpu[i]) - per_cpu[i].idle - getattr(per_cpu[i], "iowait", 0.0)
        for i in cpus
        if i < len(per_cpu)
    )


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _process_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process we may read, by pid."""
    seen = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            seen[proc.pid] = (proc.info["name"] or "?", times.user + times.system)
    return seen


def _ours() -> list[psutil.Process]:
    me = psutil.Process()
    ours = [me, *me.children(recursive=True)]
    with contextlib.suppress(psutil.Error):
        ours.append(psutil.Process(os.getppid()))
    return ours


def _our_seconds(ours: list[psutil.Process]) -> float:
    total = 0.0
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            total += _cpu_seconds(proc)
    return total


@dataclass
class CpuWindow:
    """Start-of-window counters for the CPU side."""

    cpus: list[int]
    wall: float
    busy: float
    ours: float
    processes: dict[int, tuple[str, float]]

    @classmethod
    def open(cls) -> CpuWindow:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cpus = cpus or list(range(psutil.cpu_count() or 1))
        return cls(
            cpus, time.monotonic(), _busy_seconds(cpus), _our_seconds(_ours()), _process_seconds()
        )

    def close(self) -> dict[str, Any]:
        ours = _ours()
        wall = max(time.monotonic() - self.wall, 1e-6)
        other = (_busy_seconds(self.cpus) - self.busy) - (_our_seconds(ours) - self.ours)
        mine = {p.pid for p in ours}
        now = _process_seconds()
        used = [
            (seconds - self.processes.get(pid, (name, 0.0))[1], pid, name)
            for pid, (name, seconds) in now.items()
            if pid not in mine
        ]
        top = sorted((u for u in used if u[0] > 0.05 * wall), reverse=True)[:TOP_OFFENDERS]
        return {
            "other_cpu_cores": max(other / wall, 0.0),
            "cpus_watched": len(self.cpus),
            "cpu_offenders": [
                {"pid": pid, "name": name, "cores": round(s / wall, 2)} for s, pid, name in top
            ],
        }


@dataclass
class GpuWindow:
    """Start-of-window state for the GPU side (NVML), or why there is none."""

    nvml: Any = None
    handle: Any = None
    since_us: int = 0
    unavailable: str | None = None

    @classmethod
    def open(cls, device: str) -> GpuWindow:
        if device != "cuda":
            return cls(unavailable="n/a on CPU")
        try:
            import torch

            from engine.machine import nvml, nvml_handle

            pynvml = nvml()
            handle = nvml_handle(pynvml, torch.device("cuda"))
        except Exception as exc:
            log.warning("GPU isolation check unavailable: %s", exc)
            return cls(unavailable=f"NVML unavailable: {exc}")
        return cls(pynvml, handle, int(time.time() * 1e6))

    def _processes(self) -> list[Any]:
        """Every process NVML lists on the GPU, compute and graphics."""
        nvml = self.nvml
        return [
            *nvml.nvmlDeviceGetComputeRunningProcesses(self.handle),
            *nvml.nvmlDeviceGetGraphicsRunningProcesses(self.handle),
        ]

    def _ours(self, procs: list[Any]) -> frozenset[int] | str:
        """NVML pids of this process (and, where PIDs are shared, the sweep that spawned it), or
        why this process cannot be found among ``procs``."""
        import torch

        reserved = torch.cuda.memory_reserved() if torch.cuda.is_initialized() else 0
        own = find_own_process(procs, reserved)
        if own.pid is None:
            return own.how
        return frozenset({own.pid, os.getppid()} if own.how == "pid" else {own.pid})

    def _other_utilisation_pct(self, ours: frozenset[int]) -> float:
        """Mean SM share of other processes over NVML's samples since the window opened."""
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(self.handle, self.since_us)
        except self.nvml.NVMLError_NotFound:  # no process used the GPU in the window
            return 0.0
        periods = {s.timeStamp for s in samples}
        others = sum(s.smUtil for s in samples if s.pid not in ours)
        return others / len(periods) if periods else 0.0

    def close(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"gpu_isolation": self.unavailable}
        nvml = self.nvml
        try:
            state = {
                "gpu_sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(self.handle, nvml.NVML_CLOCK_SM),
                "gpu_temperature_c": nvml.nvmlDeviceGetTemperature(
                    self.handle, nvml.NVML_TEMPERATURE_GPU
                ),
            }
            procs = self._processes()
            ours = self._ours(procs)
            if isinstance(ours, str):
                return state | {"gpu_isolation": f"unknown, not judged: {ours}"}
            others = {p.pid: round((p.usedGpuMemory or 0) / 2**20) for p in procs}
            offenders = [{"pid": pid, "mb": mb} for pid, mb in others.items() if pid not in ours]
            return state | {
                "other_gpu_pct": self._other_utilisation_pct(ours),
                "other_gpu_processes": len(offenders),
                "other_gpu_mb": sum(p["mb"] for p in offenders),
                "gpu_offenders": offenders[:TOP_OFFENDERS],
            }
        except Exception as exc:
            log.warning("GPU isolation check failed: %s", exc)
            return {"gpu_isolation": f"NVML query failed: {exc}"}


@contextlib.contextmanager
def watch_isolation(device: str) -> Any:
    """Yield a dict that holds, once the block ends, what other processes used meanwhile."""
    figures: dict[str, Any] = {}
    cpu, gpu = CpuWindow.open(), GpuWindow.open(device)
    try:
        yield figures
    finally:
        figures.update(cpu.close())
        figures.update(gpu.close())


def disturbance(
    figures: dict[str, Any], max_other_cores: float, max_other_gpu_pct: float
) -> str | None:
    """Why a trial's timings were disturbed (one line naming the culprits), or None."""
    reasons = []
    cores = figures.get("other_cpu_cores")
    if cores is not None and cores > max_other_cores:
        names = ", ".join(
            f"{o['name']} ({o['pid']}) {o['cores']:.2f}" for o in figures["cpu_offenders"]
        )
        reasons.append(
            f"other processes used {cores:.2f} CPU cores (limit {max_other_cores:g})"
            + (f": {names}" if names else "")
        )
    gpu = figures.get("other_gpu_pct")
    if gpu is not None and gpu > max_other_gpu_pct:
        pids = ", ".join(f"pid {o['pid']} {o['mb']} MB" for o in figures.get("gpu_offenders", []))
        reasons.append(
            f"other processes held {gpu:.0f} % of GPU time (limit {max_other_gpu_pct:g} %)"
            + (f": {pids}" if pids else "")
        )
    return "; ".join(reasons) or None
