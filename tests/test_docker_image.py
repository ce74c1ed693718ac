"""The Docker image agrees with the locked torch wheels: same CUDA major as the base image, the
driver it needs stated, and the C compiler Triton builds its launcher with at run time.

Docker cannot run on the development machine, so the Dockerfile is read as text against uv.lock.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# CUDA 13.x needs an R580+ driver (CUDA 13.0 release notes, minimum driver 580).
MIN_DRIVER = {13: 580, 12: 525}


def _locked_cuda() -> tuple[int, int]:
    """CUDA major.minor of the locked torch: the version of its ``nvidia-cuda-runtime`` wheel."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = [p["version"] for p in lock["package"] if p["name"] == "nvidia-cuda-runtime"]
    assert len(versions) == 1, versions
    major, minor = versions[0].split(".")[:2]
    return int(major), int(minor)


def _base_cuda() -> tuple[int, int]:
    match = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-\S+", DOCKERFILE, re.MULTILINE)
    assert match, "the image is no longer built FROM nvidia/cuda:<version>-..."
    return int(match.group(1)), int(match.group(2))


def test_base_image_cuda_matches_the_locked_torch_wheels() -> None:
    locked, base = _locked_cuda(), _base_cuda()
    assert base[0] == locked[0], f"base image CUDA {base} vs torch wheels' CUDA {locked}"
    assert base <= locked, "a newer base CUDA than torch's would raise the driver floor for nothing"


def test_the_driver_floor_is_stated_in_the_dockerfile_and_readme() -> None:
    driver = MIN_DRIVER[_locked_cuda()[0]]
    for text in (DOCKERFILE.replace("#", ""), (ROOT / "README.md").read_text()):
        assert f"driver {driver} or newer" in " ".join(text.split())


def test_image_installs_the_c_compiler_triton_needs() -> None:
    installs = " ".join(re.findall(r"apt-get install ([^&]+)", DOCKERFILE.replace("\\\n", " ")))
    packages = set(installs.split())
    assert "build-essential" in packages or {"gcc", "libc6-dev"} <= packages, packages


def test_image_has_the_cpp_compiler_inductor_needs() -> None:
    """inductor's CPU kernels are C++: gcc alone cannot build them."""
    installs = " ".join(re.findall(r"apt-get install ([^&]+)", DOCKERFILE.replace("\\\n", " ")))
    assert {"g++", "build-essential"} & set(installs.split())


def test_the_compile_cache_outlives_a_container_and_start_up_waits_for_a_cold_compile() -> None:
    """The image keeps torch.compile's caches where compose mounts a named volume, so a restarted
    replica starts warm; the health check's start period covers a cold compiled start (about
    10-20 min projected on a desktop GPU)."""
    cache = re.search(r"COMPILE_CACHE_DIR=(\S+)", DOCKERFILE)
    assert cache, "the image sets no COMPILE_CACHE_DIR"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(rf"^\s+- (\S+):{re.escape(cache.group(1))}$", compose, re.MULTILINE)
    start = re.search(r"--start-period=(\d+)s", DOCKERFILE)
    assert start and int(start.group(1)) >= 20 * 60
