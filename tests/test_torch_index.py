"""A torch build installed from PyTorch's own index (README: "Installing torch for your driver")
lasts: once ``make setup TORCH_INDEX=cu126`` recorded it, no later target's ``uv sync`` or
``uv run`` puts the locked cu130 wheels back.

The Makefile's commands are read with ``make -n``; then the same uv commands run, offline, on a toy
project whose one locked package stands in for torch, with a "+cu126" build of it installed over
the locked one, which is what the README's reinstall does to torch.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")


def _make_n(*args: str) -> list[str]:
    """The commands ``make`` would run for ``args`` (nothing is run)."""
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "UV=uv", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _marker(tmp_path: Path, index: str | None) -> str:
    path = tmp_path / "torch-index"
    if index:
        path.write_text(index + "\n")
    return f"TORCH_INDEX_FILE={path}"


def test_a_recorded_torch_index_keeps_every_sync_and_run_off_torch(tmp_path: Path) -> None:
    lines = _make_n("setup", "serve", "lint", "bench", _marker(tmp_path, "cu126"))
    syncs = [line for line in lines if line.startswith("uv sync")]
    runs = [line for line in lines if line.startswith("uv run")]
    assert syncs and len(runs) >= 3
    for sync in syncs:
        assert "--inexact --no-install-package torch --no-install-package torchaudio" in sync
    for run in runs:
        assert run.startswith("uv run --frozen --no-sync "), run
    assert any("--index-url https://download.pytorch.org/whl/cu126" in line for line in lines)


def test_without_a_recorded_index_the_lock_rules(tmp_path: Path) -> None:
    lines = _make_n("setup", "serve", _marker(tmp_path, None))
    assert "uv run --frozen python -m serving" in lines
    assert not any("--no-sync" in line or "--no-install-package" in line for line in lines)


def _wheel(folder: Path, version: str) -> None:
    """A minimal pure-Python wheel of ``fbtoy`` whose module says its version."""
    info = f"fbtoy-{version}.dist-info"
    files = {
        "fbtoy/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: fbtoy\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        record.append(f"{name},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"fbtoy-{version}-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)


@pytest.mark.slow
@pytest.mark.skipif(UV is None, reason="uv is what make setup installs first")
def test_the_reinstalled_build_survives_the_makefiles_sync_and_run(tmp_path: Path) -> None:
    locked, pinned, project = tmp_path / "pypi", tmp_path / "cu126-index", tmp_path / "project"
    _wheel(locked, "1.0")
    _wheel(pinned, "1.0+cu126")
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "toy"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["fbtoy==1.0"]\n[tool.uv]\npackage = false\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    base_python = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    env |= {
        "UV_CACHE_DIR": str(tmp_path / "cache"),
        "UV_FIND_LINKS": str(locked),
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_PYTHON": str(base_python),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    python = project / ".venv" / "bin" / "python"

    def uv(command: str) -> None:
        subprocess.run(command, shell=True, cwd=project, env=env, check=True, timeout=120)

    def version() -> str:
        done = subprocess.run(
            [str(python), "-c", "import fbtoy; print(fbtoy.VERSION)"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def pin() -> None:  # what the README's / make setup's reinstall does to torch
        uv(
            f"uv pip install -q --python {python} --reinstall --find-links {pinned} "
            "fbtoy==1.0+cu126"
        )
        assert version() == "1.0+cu126"

    uv("uv lock -q && uv sync --frozen -q")
    assert version() == "1.0"

    for marker in (None, "cu126"):
        pin()
        lines = _make_n("setup", "lint", _marker(tmp_path, marker), "TORCH_PACKAGES=fbtoy")
        sync = next(line for line in lines if line.startswith("uv sync"))
        run = next(line for line in lines if line.startswith("uv run")).removesuffix("ruff check .")
        uv(sync + " -q")
        uv(run + " python -c pass")
        # Without the record the lock puts the PyPI build back; with it the pinned build stays.
        assert version() == ("1.0" if marker is None else "1.0+cu126")
