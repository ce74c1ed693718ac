"""Silence the three start-up messages we understand, and only those, so new users do not read
them as errors.

- bitsandbytes logs a WARNING on import when the optional ``kernels`` package (a faster CPU 4-bit
  kernel from the Hub) is missing; it then uses its own kernel, so nothing is wrong.
- The descript-audio-codec layers the codec is built from call the legacy
  ``torch.nn.utils.weight_norm``, which warns that it is deprecated; we cannot change that code,
  and the codec fuses weight norm away after loading anyway.
- torch's C++ extension loader (which builds the CPU int8 kernel) logs a WARNING on import, on a
  machine without a GPU, that no CUDA runtime is found; the kernel is CPU code and needs none.

Every other warning and log record passes untouched.
"""

from __future__ import annotations

import logging
import warnings

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
WEIGHT_NORM_MESSAGE = r"`torch\.nn\.utils\.weight_norm` is deprecated"
WEIGHT_NORM_MODULE = r"torch\.nn\.utils\.weight_norm"
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
NO_CUDA_MESSAGE = "No CUDA runtime is found"


class MissingKernelsFilter(logging.Filter):
    """Drops bitsandbytes' record about the uninstalled ``kernels`` package, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        missing_package = bool(args) and isinstance(args[0], ModuleNotFoundError)
        return not (missing_package and str(record.msg).startswith(BNB_KERNELS_MESSAGE))


class NoCudaRuntimeFilter(logging.Filter):
    """Drops the C++ extension loader's record that no CUDA runtime is found, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NO_CUDA_MESSAGE)


def install() -> None:
    """Install the filters; safe to call more than once."""
    for name, kind in (
        (BNB_LOGGER, MissingKernelsFilter),
        (CPP_EXTENSION_LOGGER, NoCudaRuntimeFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    warnings.filterwarnings(
        "ignore", message=WEIGHT_NORM_MESSAGE, category=FutureWarning, module=WEIGHT_NORM_MODULE
    )


# The same warning filter in pytest's ``filterwarnings`` form: pytest restores the filters
# around every test, so a test suite registers it in its configuration instead.
PYTEST_FILTERWARNINGS = (f"ignore:{WEIGHT_NORM_MESSAGE}:FutureWarning:{WEIGHT_NORM_MODULE}",)
