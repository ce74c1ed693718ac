"""``fishbench::int8_gemv``: the CPU int8 GEMV of a decode step, through AVX-512 VNNI.

At one row (a frame step) a linear layer is a GEMV that reads each weight byte once, so its speed
is memory bandwidth. aten's ``_weight_int8pack_mm`` widens every byte to fp32 and multiplies it by
its scale before the FMA: four vector instructions per 16 bytes, which on two cores is compute
bound at about 45 % of the machine's read bandwidth (docs/engine.md has the figures).
``kernels/int8_gemv.cpp`` splits the activations into two int8 digits instead and meets 64 weight
bytes per ``vpdpbusd``, reaching what a plain read of the same matrices reaches. Two digits keep
about 15 bits of each activation, more than bf16 carries, and the sums are exact integers: the
result equals the float product to fp32 rounding.

The kernel is C++ built once per machine by torch's extension loader (about 30 s with g++) into
torch's extension folder; ``problem()`` says why it cannot run here (a CPU without AVX-512
VNNI, no C++ compiler, a failed build), and profile resolution falls back to aten with that reason.
It is a torch custom op, so compiled frame steps call it as one opaque kernel.

A prefill meets each weight byte with one row per prompt token, and there the VNNI loop is
compute bound (140 ms for a 42-token text through the 28 slow layers at full size on two cores).
On CPUs with AMX a call of 2 rows or more can run on AMX int8 tiles instead (``amx=True``;
``amx_problem()`` says why not): the same digits and exact integer sums, so the same output bits,
at 16 times the multiply-adds per instruction (43 ms for that text).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "int8_gemv.cpp"
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mamx-tile", "-mamx-int8", "-fopenmp")
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512_vnni")  # /proc/cpuinfo spellings
AMX_FLAGS = ("amx_tile", "amx_int8")
EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"  # torch's own variable for where extensions build
K_MULTIPLE, N_MULTIPLE = 64, 4  # bytes per vpdpbusd; weight rows per block


def fits(in_features: int, out_features: int) -> bool:
    """Whether a linear layer of this shape can run on the kernel."""
    return in_features % K_MULTIPLE == 0 and out_features % N_MULTIPLE == 0


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    flags = next((line for line in lines if line.startswith("flags")), "")
    return set(flags.partition(":")[2].split())


def _build_folder() -> Path:
    """Torch's folder for built extensions (``$TORCH_EXTENSIONS_DIR``, else
    ``~/.cache/torch_extensions``): one build per machine, source, flags and torch version."""
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode()
    ).hexdigest()[:12]
    root = os.environ.get(EXTENSIONS_ENV) or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / f"fishbench_int8_gemv-{key}"


@functools.cache
def _extension() -> ModuleType:
    from torch.utils import cpp_extension

    folder = _build_folder()
    folder.mkdir(parents=True, exist_ok=True)
    fresh = not any(folder.glob("*.so"))
    if fresh:
        log.info("building the int8 VNNI kernel in %s (once per machine, about 30 s)", folder)
    t0 = time.perf_counter()
    module = cpp_extension.load(
        name=f"fishbench_int8_gemv_{folder.name.rpartition('-')[2]}",
        sources=[str(SOURCE)],
        extra_cflags=list(FLAGS),
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )
    if fresh:
        log.info("int8 VNNI kernel built in %.1f s", time.perf_counter() - t0)
    return module


def missing_cpu_flags(needed: tuple[str, ...] = NEEDED_FLAGS) -> list[str]:
    """The instruction sets of ``needed`` (default: what the kernel needs) this CPU lacks."""
    return [flag for flag in needed if flag not in _cpu_flags()]


@functools.cache
def problem() -> str | None:
    """Why the kernel cannot run on this machine, or None (it is then built and loaded)."""
    missing = missing_cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    from torch.utils import cpp_extension

    compiler = cpp_extension.get_cxx_compiler()
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) to build it"
    try:
        _extension()
    except Exception as exc:  # a compiler that fails on these flags, a broken toolchain
        first = str(exc).strip().splitlines()
        log.warning("the int8 VNNI kernel did not build: %s", exc)
        return f"its build failed ({first[0] if first else type(exc).__name__})"
    return None


@functools.cache
def amx_problem() -> str | None:
    """Why prefills cannot run on AMX tiles here, or None."""
    vnni = problem()
    if vnni:
        return vnni
    missing = missing_cpu_flags(AMX_FLAGS)
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    if not _extension().amx_ready():
        return "Linux did not grant this process the AMX tile state (arch_prctl refused)"
    return None


def amx_calls() -> int:
    """How many calls in this process have run on AMX tiles (the path a call took)."""
    return _extension().amx_calls()


@torch.library.custom_op("fishbench::int8_gemv", mutates_args=())
def int8_gemv(
    x: torch.Tensor, weight: torch.Tensor, rowsum: torch.Tensor, scales: torch.Tensor, amx: bool
) -> torch.Tensor:
    """``x [M, K] @ (weight [N, K] int8 * scales [N]).T`` in x's dtype; ``rowsum`` is
    ``weight.sum(1)`` as int32 (the VNNI loop's unsigned-digit offset). With ``amx``, calls of 2
    rows or more run on AMX tiles where the CPU has them."""
    return _extension().int8_gemv(x, weight, rowsum, scales, amx)


@int8_gemv.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, rowsum: torch.Tensor, scales: torch.Tensor, amx: bool
) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])
