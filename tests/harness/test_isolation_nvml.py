"""The GPU side of a trial's isolation watch, and the engine's per-process VRAM figure, find this
process among NVML's processes even where NVML reports host PIDs (inside a container), and say
"unknown" instead of marking the trial NOISY when it cannot.

NVML is the thing that cannot exist here, so a fake ``pynvml`` module stands in for it; torch's
reserved-memory figure is patched to what a process holding a 3 GiB pool would report.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import torch

import engine.machine
from engine.telemetry import NvmlSampler
from harness.trial.isolation import GpuWindow, disturbance

MB = 2**20
RESERVED = 3 * 2**30
HOST_PID = 48213  # this process as the host sees it; os.getpid() inside the container differs
CONTEXT = 600 * MB


def _proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


class FakeNvml:
    """The pynvml calls the watch and the sampler make, answering with fixed processes."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    class NVMLError_NotFound(Exception):  # pynvml's name
        pass

    def __init__(self, procs: list[SimpleNamespace], sm_util: dict[int, int]) -> None:
        self.procs, self.sm_util = procs, sm_util

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return list(self.procs)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return []

    def nvmlDeviceGetProcessUtilization(self, handle, since):
        return [
            SimpleNamespace(pid=pid, smUtil=util, timeStamp=stamp)
            for stamp in (1, 2)
            for pid, util in self.sm_util.items()
        ]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 41

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=90)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(time.monotonic() * 1000)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch):
    """Install a FakeNvml as ``pynvml`` and make torch report a 3 GiB reserved pool."""

    def install(procs: list[SimpleNamespace], sm_util: dict[int, int]) -> FakeNvml:
        fake = FakeNvml(procs, sm_util)
        monkeypatch.setattr(engine.machine, "nvml", lambda: fake)
        monkeypatch.setattr(engine.machine, "nvml_handle", lambda nvml, device: "gpu0")
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *_: RESERVED)
        return fake

    return install


def _watch() -> dict:
    window = GpuWindow.open("cuda")
    return window.close()


def test_own_use_under_a_host_pid_is_not_another_process(nvml) -> None:
    nvml([_proc(HOST_PID, RESERVED + CONTEXT)], {HOST_PID: 96})
    figures = _watch()
    assert figures["other_gpu_pct"] == 0.0
    assert figures["other_gpu_processes"] == 0
    assert disturbance(figures, max_other_cores=1.0, max_other_gpu_pct=5.0) is None


def test_a_real_neighbour_is_still_noisy_next_to_our_host_pid(nvml) -> None:
    nvml([_proc(HOST_PID, RESERVED + CONTEXT), _proc(777, 20 * 2**30)], {HOST_PID: 40, 777: 55})
    figures = _watch()
    assert figures["other_gpu_pct"] == 55.0
    assert figures["gpu_offenders"] == [{"pid": 777, "mb": 20 * 1024}]
    assert "55 % of GPU time" in disturbance(figures, 1.0, 5.0)


def test_ambiguous_memory_is_unknown_and_not_noisy(nvml) -> None:
    nvml([_proc(HOST_PID, RESERVED + CONTEXT), _proc(999, RESERVED + 2 * CONTEXT)], {999: 80})
    figures = _watch()
    assert "other_gpu_pct" not in figures
    assert figures["gpu_isolation"].startswith("unknown, not judged: NVML lists no PID")
    assert "2 of its 2 processes match" in figures["gpu_isolation"]
    assert figures["gpu_sm_clock_mhz"] == 1980
    assert disturbance(figures, 1.0, 5.0) is None


def test_shared_pid_namespace_matches_by_pid(nvml) -> None:
    nvml([_proc(os.getpid(), RESERVED + CONTEXT), _proc(777, RESERVED + CONTEXT)], {777: 30})
    figures = _watch()
    assert figures["other_gpu_pct"] == 30.0
    assert figures["other_gpu_processes"] == 1


def test_engine_process_memory_is_found_under_a_host_pid(nvml) -> None:
    nvml([_proc(HOST_PID, RESERVED + CONTEXT), _proc(777, 20 * 2**30)], {})
    with NvmlSampler(torch.device("cuda"), period_s=60.0) as sampler:
        pass  # shorter than one period: the sample taken on exit still finds it
    assert sampler.process_mb == (RESERVED + CONTEXT) / MB


def test_find_own_process_never_guesses() -> None:
    from engine.telemetry import OwnProcess, find_own_process

    procs = [_proc(10, RESERVED + CONTEXT), _proc(11, None)]
    assert find_own_process(procs, RESERVED, pid=1) == OwnProcess(10, "memory")
    assert find_own_process(procs, 0, pid=1).pid is None  # nothing of ours to match yet
    assert find_own_process([_proc(10, RESERVED - MB)], RESERVED, pid=1).pid is None  # too small
    assert find_own_process([_proc(10, 9 * 2**30)], RESERVED, pid=1).pid is None  # too large
