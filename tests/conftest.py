"""Shared fixtures (one tiny synthetic checkpoint and one real Piper recording per test session)
and the test layers.

Layers are markers set here, so a new test lands in the right one without remembering to:
``engine``, ``harness``, ``service`` and ``ui`` follow the folder (top-level files are the CLI's:
``harness``, but for the ``packaging`` ones), ``journey`` is the fresh-clone walk, and ``unit`` is
every test that needs none of the heavy fixtures below and is not marked ``slow`` (``make
test-fast``; a test that starts a process itself is marked ``slow``), the pure UI tests included.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

REFERENCE_TEXT = "This is the reference recording of the speaker."


LAYERS = {"engine": "engine", "harness": "harness", "serving": "service", "ui": "ui"}
HEAVY_FIXTURES = frozenset(
    {
        "tiny_checkpoint",  # builds a checkpoint; everything that loads a model depends on it
        "piper_reference",  # speaks with Piper
        "server",  # a live uvicorn process
        "tiny_sweep",  # a whole sweep
        "browser",  # headless Chromium
    }
)
NOT_UNIT = frozenset({"slow", "journey"})
# Top-level files about how the project is built and installed, not about the CLI.
PACKAGING = frozenset({"test_docker_image.py", "test_torch_index.py"})


def _layer(folder: str) -> str:
    if folder in PACKAGING:
        return "packaging"
    return LAYERS.get(folder, "harness" if folder.startswith("test_") else folder)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its layer marker, and ``unit`` to the pure ones."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        layer = _layer(item.path.relative_to(tests_dir).parts[0])
        item.add_marker(layer)
        marks = {mark.name for mark in item.iter_markers()}
        if not (set(getattr(item, "fixturenames", ())) & HEAVY_FIXTURES or marks & NOT_UNIT):
            item.add_marker("unit")


def pytest_configure(config: pytest.Config) -> None:
    """The start-up warnings the engine silences stay silent under pytest's own filters, and
    every compile cache of the run (this process's and its children's) lives in a temporary
    folder, never in the checkout's ``.cache/``; so does the int8 kernel the run builds (once,
    whatever home folder a test gives its children)."""
    from engine.compile_cache import COMPILE_CACHE_ENV
    from engine.model.int8_kernel import EXTENSIONS_ENV
    from engine.quiet import PYTEST_FILTERWARNINGS

    for line in PYTEST_FILTERWARNINGS:
        config.addinivalue_line("filterwarnings", line)
    os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="fishbench-test-compile-cache-")
    os.environ[EXTENSIONS_ENV] = os.path.join(os.environ[COMPILE_CACHE_ENV], "extensions")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.model.synthetic import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0).path


@pytest.fixture(scope="session")
def piper_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real speech recording (Piper, 22.05 kHz WAV) and its transcript."""
    from harness.quality.piper_voice import write_speech

    return write_speech(
        tmp_path_factory.mktemp("speech") / "reference.wav", REFERENCE_TEXT
    ), REFERENCE_TEXT


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Path):
    """The default-profile engine on the tiny checkpoint (CPU, fp32)."""
    from engine.engine import OptimizedFishSpeech
    from engine.profile import EngineProfile

    return OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile())


class PeakRSS:
    """How far a process's resident memory rises inside ``with`` above where it started, at its
    peak: the kernel's high-water mark (``VmHWM``), reset on entry through ``clear_refs``, so a
    spike freed before the block ends still counts (Linux). ``pid`` is another process, e.g. a
    server; the default is this one."""

    def __init__(self, pid: int | str = "self") -> None:
        self.proc = Path("/proc") / str(pid)
        self.growth_bytes = 0

    def _kib(self, field: str) -> int:
        status = (self.proc / "status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))

    def __enter__(self) -> PeakRSS:
        (self.proc / "clear_refs").write_text("5")  # VmHWM := VmRSS
        self.start_kib = self._kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_bytes = (self._kib("VmHWM") - self.start_kib) * 1024


@pytest.fixture(scope="session")
def peak_rss() -> type[PeakRSS]:
    """``with peak_rss(pid) as peak: ...``, then ``peak.growth_bytes`` (see ``PeakRSS``)."""
    return PeakRSS
