"""Preflight: a visible NVIDIA GPU that torch cannot use stops start-up with one line saying why.

No GPU can exist on the test machine, so the device nodes, CUDA availability and driver version
are injected through check_cuda_usable's keyword arguments; everything else is real.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.preflight import PreflightError, check_cuda_usable, parse_proc_driver_version
from engine.telemetry import pci_bus_id

NODE = ["/dev/nvidia0"]


def test_cpu_requested_never_fails_even_next_to_an_unusable_gpu() -> None:
    check_cuda_usable("cpu", device_nodes=NODE, cuda_available=False, driver_version="535.104")


def test_unusable_gpu_fails_with_one_line_naming_driver_torch_and_readme() -> None:
    with pytest.raises(PreflightError) as info:
        check_cuda_usable("auto", device_nodes=NODE, cuda_available=False, driver_version="535.104")
    message = str(info.value)
    assert "\n" not in message
    assert "/dev/nvidia0" in message
    assert "driver 535.104" in message
    assert torch.__version__ in message
    if torch.version.cuda is None:
        assert "CPU-only torch build" in message
    else:
        assert f"CUDA {torch.version.cuda}" in message
    assert 'README: "Installing torch for your driver"' in message
    assert "device: cpu" in message


def test_explicit_cuda_request_fails_the_same_way() -> None:
    with pytest.raises(PreflightError, match="cannot use it"):
        check_cuda_usable("cuda", device_nodes=NODE, cuda_available=False, driver_version="550")


def test_no_device_node_means_nothing_to_check() -> None:
    check_cuda_usable("auto", device_nodes=[], cuda_available=False)


def test_usable_gpu_passes() -> None:
    check_cuda_usable("auto", device_nodes=NODE, cuda_available=True, driver_version="580.65")


def test_this_machine_passes_with_nothing_injected() -> None:
    # No GPU here: either no device node, or CUDA works; both mean no error.
    check_cuda_usable()


def test_proc_driver_version_is_read_from_the_nvrm_line() -> None:
    text = (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert parse_proc_driver_version(text) == "535.104.05"
    assert parse_proc_driver_version("GCC version: 12.2.0\n") is None


def test_pci_bus_id_uses_nvml_format() -> None:
    props = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x41, pci_device_id=0)
    assert pci_bus_id(props) == "00000000:41:00.0"
