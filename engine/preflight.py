"""Start-up check that the GPU asked for is actually usable by this torch build.

Three ways to end up on the CPU (or crash at the first kernel) without anyone noticing, each turned
into one clear line at start-up:

- a driver older than the CUDA version torch was built for (PyPI's torch 2.11 wheels are CUDA 13
  builds, ``+cu130``, needing driver 580+) makes ``torch.cuda.is_available()`` quietly False;
- ``CUDA_VISIBLE_DEVICES`` hiding every GPU looks the same to torch, but is not the driver's fault;
- a GPU older than the oldest architecture the wheel was built for (cu130: sm_75) is "available",
  and the first kernel launch fails with "no kernel image is available".

And a profile that says ``device: cuda`` on a machine with no usable GPU stops rather than
running on the CPU under a warning.
"""

from __future__ import annotations

import glob
import logging
import os
import re

import torch

from engine import machine

log = logging.getLogger(__name__)

DEVICE_NODE_GLOB = "/dev/nvidia[0-9]*"
README_SECTION = 'README: "Installing torch for your driver"'

_ARCH_RE = re.compile(r"^sm_(\d+)[a-z]?$")


class PreflightError(RuntimeError):
    """The machine cannot run what was asked for; the message says why and what to do."""


def _device_nodes() -> list[str]:
    """NVIDIA device nodes (``/dev/nvidia0``, ...): present whenever the kernel driver sees a GPU,
    even when torch cannot use it."""
    return sorted(glob.glob(DEVICE_NODE_GLOB))


def _torch_build() -> str:
    """Which torch this is, and which CUDA it needs (None on CPU-only builds)."""
    if torch.version.cuda is None:
        return f"a CPU-only torch build (torch {torch.__version__})"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda})"


def lowest_arch(arch_list: list[str]) -> int | None:
    """The oldest ``sm_XY`` the torch build has kernels for, as ``10 * major + minor`` (``sm_75`` ->
    75); None when the list names none (CPU build). ``compute_XY`` (PTX) entries only JIT forward to
    newer GPUs, so they never lower the floor."""
    found = [int(m.group(1)) for m in map(_ARCH_RE.match, arch_list) if m]
    return min(found) if found else None


def check_gpu_arch(
    name: str, capability: tuple[int, int], arch_list: list[str], build: str | None = None
) -> None:
    """Raise PreflightError when the GPU is older than every architecture in the torch build.

    ``is_available()`` is True on such a GPU, but the first kernel fails with "no kernel image is
    available for execution on the device", long after start-up.
    """
    floor = lowest_arch(arch_list)
    sm = 10 * capability[0] + capability[1]
    if floor is None or sm >= floor:
        return
    raise PreflightError(
        f"{name} is sm_{sm} (compute capability {capability[0]}.{capability[1]}) but "
        f"{build or _torch_build()} has kernels for sm_{floor} and newer only; install a torch "
        f"build that still covers sm_{sm} ({README_SECTION}) or set device: cpu"
    )


def hidden_by_visible_devices(value: str | None) -> bool:
    """True when ``CUDA_VISIBLE_DEVICES`` hides every GPU: set but empty, or starting with an
    invalid (negative) index, at which CUDA stops reading the list."""
    if value is None:
        return False
    first = value.strip().split(",")[0].strip()
    return first == "" or first.startswith("-")


def _where(nodes: list[str]) -> str:
    return nodes[0] if len(nodes) == 1 else f"{nodes[0]} +{len(nodes) - 1} more"


def check_cuda_usable(
    requested_device: str = "auto",
    *,
    device_nodes: list[str] | None = None,
    cuda_available: bool | None = None,
    driver_version: str | None = None,
) -> None:
    """Raise PreflightError when the GPU asked for (or present) cannot be used.

    Silently benchmarking or serving on CPU next to an idle GPU is worse than stopping, so unless
    the CPU was asked for explicitly this fails with one line saying why: the driver against
    torch's CUDA version, ``CUDA_VISIBLE_DEVICES`` hiding every GPU, a GPU older than the torch
    build's kernels, or ``device: cuda`` on a machine where torch sees no GPU. The keyword
    arguments replace what is read from the system (for tests).
    """
    requested = str(requested_device).strip().lower()
    if requested == "cpu":
        return
    nodes = _device_nodes() if device_nodes is None else list(device_nodes)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if available:
        log.debug("CUDA usable; NVIDIA device nodes: %s", ", ".join(nodes) or "none listed")
        check_gpu_arch(
            machine.device_name("cuda"),
            torch.cuda.get_device_capability(),
            torch.cuda.get_arch_list(),
        )
        return
    if hidden_by_visible_devices(visible) and (nodes or requested == "cuda"):
        what = f"device: {requested}" + (f" with a GPU present ({_where(nodes)})" if nodes else "")
        raise PreflightError(
            f"{what}, but CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from torch; unset it "
            "or name a GPU to use one, or set device: cpu to run on the CPU on purpose"
        )
    if nodes:
        driver = machine.driver_version() if driver_version is None else driver_version
        driver = " ".join(driver.split()) or "unknown"  # keep the message on one line
        raise PreflightError(
            f"NVIDIA GPU found ({_where(nodes)}, driver {driver}) but {_torch_build()} cannot use "
            f"it; install a torch build for your driver ({README_SECTION}) or set device: cpu"
        )
    if requested == "cuda":
        raise PreflightError(
            f"device: cuda was asked for, but this machine has no NVIDIA GPU that "
            f"{_torch_build()} can see (no {DEVICE_NODE_GLOB}); set device: auto or cpu to run "
            "on the CPU"
        )
