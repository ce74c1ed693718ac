"""Facts about this machine that every part reads, in one place: the device's name, the CPU's
model, the NVIDIA driver's version and NVML handles for the GPU torch uses.

Each used to be read in several modules, and the copies differed (one driver lookup fell back to
``/proc``, another did not).
"""

from __future__ import annotations

import functools
import logging
import platform
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
_VERSION_RE = re.compile(r"\b(\d+\.\d+(?:\.\d+)*)\b")


def device_name(device: torch.device | str | None = None) -> str:
    """``"cpu"`` for the CPU, else the CUDA device's name (the current one by default)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def nvml() -> Any:
    """The initialised ``pynvml`` module (once per process; NVML counts its inits), or raises
    what made it unavailable."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` text (its ``NVRM version`` line)."""
    for line in text.splitlines():
        if line.startswith("NVRM version"):
            match = _VERSION_RE.search(line)
            return match.group(1) if match else None
    return None


def driver_version() -> str:
    """The installed NVIDIA driver version: NVML first (independent of torch's CUDA), then the
    kernel module's /proc file, else "unknown"."""
    try:
        return str(nvml().nvmlSystemGetDriverVersion())
    except Exception as exc:
        log.debug("NVML driver version unavailable: %s", exc)
    try:
        version = parse_proc_driver_version(PROC_DRIVER_VERSION.read_text())
        if version:
            return version
    except OSError as exc:
        log.debug("%s unreadable: %s", PROC_DRIVER_VERSION, exc)
    return "unknown"


def pci_bus_id(props: Any) -> str:
    """NVML's PCI bus id string for a torch device-properties object.

    NVML numbers GPUs in PCI order while torch follows CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER,
    so indexes can name different GPUs; the PCI address names the same one in both.
    """
    return f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"


def nvml_handle(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of the GPU torch uses for `device`, found by PCI bus id; falls back to
    torch's index (which may name another GPU) when the bus id lookup fails."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        bus_id = pci_bus_id(torch.cuda.get_device_properties(index))
        by_bus_id = getattr(nvml, "nvmlDeviceGetHandleByPciBusId_v2", None) or (
            nvml.nvmlDeviceGetHandleByPciBusId
        )
        return by_bus_id(bus_id)
    except Exception as exc:
        log.info("NVML lookup by PCI bus id failed (%s); using index %d", exc, index)
        return nvml.nvmlDeviceGetHandleByIndex(index)
