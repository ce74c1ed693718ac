"""Start-up check that a visible NVIDIA GPU is actually usable by this torch build.

A driver older than the CUDA version torch was built for (PyPI's torch 2.11 wheels are CUDA 13
builds, ``+cu130``) makes ``torch.cuda.is_available()`` quietly return False, and everything would
then run on CPU without anyone noticing. This module turns that into one clear line at start-up.
"""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEVICE_NODE_GLOB = "/dev/nvidia[0-9]*"
PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
README_SECTION = 'README: "Installing torch for your driver"'

_VERSION_RE = re.compile(r"\b(\d+\.\d+(?:\.\d+)*)\b")


class PreflightError(RuntimeError):
    """The machine cannot run what was asked for; the message says why and what to do."""


def _device_nodes() -> list[str]:
    """NVIDIA device nodes (``/dev/nvidia0``, ...): present whenever the kernel driver sees a GPU,
    even when torch cannot use it."""
    return sorted(glob.glob(DEVICE_NODE_GLOB))


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` text (its ``NVRM version`` line)."""
    for line in text.splitlines():
        if line.startswith("NVRM version"):
            match = _VERSION_RE.search(line)
            return match.group(1) if match else None
    return None


def _driver_version() -> str:
    """The installed NVIDIA driver version: NVML first (independent of torch's CUDA), then the
    kernel module's /proc file, else "unknown"."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        log.debug("NVML driver version unavailable: %s", exc)
    try:
        version = parse_proc_driver_version(PROC_DRIVER_VERSION.read_text())
        if version:
            return version
    except OSError as exc:
        log.debug("%s unreadable: %s", PROC_DRIVER_VERSION, exc)
    return "unknown"


def _torch_build() -> str:
    """Which torch this is, and which CUDA it needs (None on CPU-only builds)."""
    if torch.version.cuda is None:
        return f"a CPU-only torch build (torch {torch.__version__})"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda})"


def check_cuda_usable(
    requested_device: str = "auto",
    *,
    device_nodes: list[str] | None = None,
    cuda_available: bool | None = None,
    driver_version: str | None = None,
) -> None:
    """Raise PreflightError when an NVIDIA GPU is present but torch cannot use it.

    Silently benchmarking or serving on CPU next to an idle GPU is worse than stopping, so unless
    the CPU was asked for explicitly this fails with one line naming the driver and torch's CUDA
    version. The keyword arguments replace what is read from the system (for tests).
    """
    if str(requested_device).strip().lower() == "cpu":
        return
    nodes = _device_nodes() if device_nodes is None else list(device_nodes)
    if not nodes:
        return
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if available:
        log.debug("CUDA usable; NVIDIA device nodes: %s", ", ".join(nodes))
        return
    driver = _driver_version() if driver_version is None else driver_version
    driver = " ".join(driver.split()) or "unknown"  # keep the message on one line
    where = nodes[0] if len(nodes) == 1 else f"{nodes[0]} +{len(nodes) - 1} more"
    raise PreflightError(
        f"NVIDIA GPU found ({where}, driver {driver}) but {_torch_build()} cannot use it; "
        f"install a torch build for your driver ({README_SECTION}) or set device: cpu"
    )
