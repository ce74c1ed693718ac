"""The machine a sweep runs on: what it is (MLflow tags) and who else uses it, at the start and
during the trials.

The start survey is a one-second isolation watch (``harness.trial.isolation``) in the sweep
process; the warning it prints names the processes a desktop user would close first. The report
header sums up what every trial's own watch saw, so a reader knows how far to trust the figures.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from engine.machine import cpu_model, driver_version
from engine.profile import Hardware
from harness.trial.isolation import watch_isolation
from harness.trial.record import TrialRecord

SURVEY_S = 1.0


def hardware_tags(hw: Hardware) -> dict[str, str]:
    """The machine as MLflow tags: what runs compare across (``hardware_id`` is the key; the
    champion tag is per ``hardware_id``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tags = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "n/a",
        "cpu_model": cpu_model(),
        "cpu_cores": str(cores),
    }
    if hw.device == "cuda":
        vram = torch.cuda.get_device_properties(0).total_memory // 2**20
        tags.update(
            gpu_name=hw.name,
            compute_capability=hw.capability_str or "n/a",
            vram_mb=str(vram),
            driver_version=driver_version(),
            hardware_id=hw.name,
        )
    else:
        tags.update(
            gpu_name="cpu",
            compute_capability="n/a",
            vram_mb="n/a on CPU: memory figures are host RSS; GPU utilization and energy n/a",
            driver_version="n/a",
            hardware_id=f"CPU {tags['cpu_model']} x{cores}",
        )
    tags["hardware_id"] = tags["hardware_id"].replace("'", "")  # MLflow filter strings quote it
    return tags


def survey(device: str) -> dict[str, Any]:
    """What other processes use on this machine right now (a one-second watch)."""
    with watch_isolation(device) as figures:
        time.sleep(SURVEY_S)
    return figures


def _cpu_users(figures: dict[str, Any]) -> str:
    return ", ".join(
        f"{o['name']} (pid {o['pid']}) {o['cores']:.2f} cores"
        for o in figures.get("cpu_offenders", [])
    )


def _gpu_users(figures: dict[str, Any]) -> str:
    return ", ".join(f"pid {o['pid']} {o['mb']} MB" for o in figures.get("gpu_offenders", []))


def busy_warning(figures: dict[str, Any], max_other_cores: float) -> str | None:
    """One line naming the other processes seen, when there are any worth naming."""
    parts = []
    if figures.get("other_gpu_processes"):
        parts.append(f"{figures['other_gpu_processes']} other GPU processes: {_gpu_users(figures)}")
    cores = figures.get("other_cpu_cores", 0.0)
    if cores > max_other_cores / 2:
        users = _cpu_users(figures)
        parts.append(f"other processes use {cores:.2f} CPU cores" + (f": {users}" if users else ""))
    if not parts:
        return None
    return "; ".join(parts) + ". Trials they disturb are marked NOISY and re-run once."


def _gpu_line(figures: dict[str, Any]) -> str:
    if "gpu_isolation" in figures:
        return f"GPU: {figures['gpu_isolation']}"
    return (
        f"GPU: {figures['other_gpu_processes']} other processes ({figures['other_gpu_mb']} MB), "
        f"SM clock {figures['gpu_sm_clock_mhz']} MHz, {figures['gpu_temperature_c']} C"
    )


def _spread(records: Sequence[TrialRecord], key: str) -> tuple[float, float, float] | None:
    """Minimum, median and maximum of a metric over the trials that have it."""
    values = [r.metric(key) for r in records if r.metric(key) is not None]
    return (min(values), statistics.median(values), max(values)) if values else None


def state_lines(start: dict[str, Any], records: Sequence[TrialRecord]) -> list[str]:
    """Report header lines: the machine at the start, and what the trials' watches saw."""
    users = _cpu_users(start)
    lines = [
        f"- machine at the start: other processes used {start.get('other_cpu_cores', 0.0):.2f} "
        f"of {start.get('cpus_watched', '?')} CPU cores"
        + (f" ({users})" if users else "")
        + f"; {_gpu_line(start)}"
    ]
    cpu = _spread(records, "other_cpu_cores")
    if cpu is not None:
        noisy = [r.name for r in records if r.noisy]
        line = (
            f"- during the timed repeats: other processes used a median {cpu[1]:.2f}, "
            f"at most {cpu[2]:.2f} CPU cores; NOISY: {len(noisy)} of "
            f"{sum(r.ok for r in records)} measured trials"
        )
        lines.append(line + (f" ({', '.join(noisy)})" if noisy else ""))
    clock, temp = _spread(records, "gpu_sm_clock_mhz"), _spread(records, "gpu_temperature_c")
    if clock is not None and temp is not None:
        low_clock = min(
            r.metric("gpu_sm_clock_mhz") for r in records if r.metric("gpu_sm_clock_mhz")
        )
        lines.append(
            f"- GPU during the trials: SM clock {low_clock:.0f}-{clock[1]:.0f} MHz, "
            f"temperature up to {temp[1]:.0f} C"
        )
    return lines
