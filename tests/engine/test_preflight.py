"""Preflight: a GPU that torch cannot use (or that was asked for and is missing) stops start-up
with one line saying why.

No GPU can exist on the test machine, so the device nodes, CUDA availability and driver version
are injected through check_cuda_usable's keyword arguments, and the device's name, compute
capability and the wheel's architecture list are patched onto torch.cuda; everything else is real.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.machine import parse_proc_driver_version, pci_bus_id
from engine.preflight import PreflightError, check_cuda_usable

NODE = ["/dev/nvidia0"]
# torch.cuda.get_arch_list() of a torch 2.11 +cu130 wheel: nothing older than Turing (sm_75).
CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.fixture(autouse=True)
def _all_gpus_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    """torch.cuda answers as if ``name`` were device 0 under the cu130 wheel."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(CU130_ARCHS))


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


def test_usable_gpu_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, "NVIDIA H200", (9, 0))
    check_cuda_usable("auto", device_nodes=NODE, cuda_available=True, driver_version="580.65")


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_gpu_older_than_the_wheel_is_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch, requested: str
) -> None:
    # is_available() is True on a Pascal card under cu130; its first kernel would fail.
    _gpu(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    with pytest.raises(PreflightError) as info:
        check_cuda_usable(requested, device_nodes=NODE, cuda_available=True)
    message = str(info.value)
    assert "\n" not in message
    assert "Tesla P100-PCIE-16GB is sm_60" in message
    assert "sm_75 and newer only" in message
    assert "device: cpu" in message


def test_gpu_newer_than_every_listed_arch_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, "NVIDIA RTX PRO 6000", (12, 1))  # PTX of the newest arch JITs forward
    check_cuda_usable("auto", device_nodes=NODE, cuda_available=True)


def test_lowest_arch_ignores_ptx_and_arch_suffixes() -> None:
    from engine.preflight import lowest_arch

    assert lowest_arch(["compute_50", "sm_90a", "sm_75", "sm_100a"]) == 75
    assert lowest_arch([]) is None


@pytest.mark.parametrize("value", ["", "-1"])
def test_hidden_gpus_blame_cuda_visible_devices_not_the_driver(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with pytest.raises(PreflightError) as info:
        check_cuda_usable("auto", device_nodes=NODE, cuda_available=False, driver_version="580.65")
    message = str(info.value)
    assert "\n" not in message
    assert f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU" in message
    assert "driver" not in message
    assert "device: cpu" in message


def test_cuda_requested_on_a_machine_without_a_gpu_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PreflightError, match="device: cuda was asked for"):
        check_cuda_usable("cuda", device_nodes=[], cuda_available=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(PreflightError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        check_cuda_usable("cuda", device_nodes=[], cuda_available=False)


def test_auto_on_a_machine_without_a_gpu_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    check_cuda_usable("auto", device_nodes=[], cuda_available=False)


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
