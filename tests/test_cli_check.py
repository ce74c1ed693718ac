"""``fishbench check`` and the start-up noise every command used to print.

The check validates a folder as the engine loads it, without running it; the two start-up messages
we understand (bitsandbytes' missing ``kernels`` package, torch's legacy ``weight_norm``
deprecation) are silenced while every other warning still shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.model.checkpoint import CheckpointError, CheckpointFolder
from engine.model.checkpoint_report import _codec_facts
from engine.model.upstream import meta_codec
from harness.cli import main

BNB_MESSAGE = "Failed to load CPU gemm_4bit_forward"
WEIGHT_NORM_MESSAGE = "`torch.nn.utils.weight_norm` is deprecated"
NO_CUDA_MESSAGE = "No CUDA runtime is found"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, check=False
    )


def _folder_with(tiny_checkpoint: Path, folder: Path, name: str, data: bytes) -> Path:
    """The tiny checkpoint's files linked into ``folder``, except ``name``, written as ``data``."""
    folder.mkdir()
    for source in tiny_checkpoint.iterdir():
        if source.name != name:
            (folder / source.name).symlink_to(source)
    (folder / name).write_bytes(data)
    return folder


def test_check_reports_a_usable_checkpoint_quietly(tiny_checkpoint: Path) -> None:
    result = _run("-m", "harness.cli", "check", str(tiny_checkpoint))
    assert result.returncode == 0, result.stderr
    marker = json.loads((tiny_checkpoint / "SYNTHETIC.json").read_text())
    counts = marker["parameters"]
    out = result.stdout
    assert f"{tiny_checkpoint}: usable" in out
    assert f"model.pth  {counts['dual_ar']:,} parameters in 34 tensors (bfloat16 x34)" in out
    assert f"codec.pth  {counts['codec']:,} parameters in 388 tensors" in out
    assert "synthetic (tiny preset, seed 0)" in out
    assert "n_layer 2, n_fast_layer 1" in out and "num_codebooks 10" in out
    assert "im_end 516, semantic_begin 527, semantic_end 1550" in out
    assert CheckpointFolder.open(tiny_checkpoint).content_hash in out
    assert WEIGHT_NORM_MESSAGE not in result.stderr  # the check builds the codec
    assert BNB_MESSAGE not in result.stderr


def test_check_refuses_a_truncated_model_naming_it(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = (tiny_checkpoint / "model.pth").read_bytes()
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "model.pth", data[: len(data) // 2])
    assert main(["check", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"fishbench check: error: {folder / 'model.pth'} cannot be read")


def test_check_refuses_a_foreign_codec_naming_it(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    foreign = (tiny_checkpoint / "model.pth").read_bytes()  # a DualAR state_dict as codec.pth
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "codec.pth", foreign)
    assert main(["check", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fishbench check: error: {folder / 'codec.pth'} does not match the model: "
        "388 missing: decoder.model.0.conv.bias, decoder.model.0.conv.parametrizations.weight."
        "original0, decoder.model.0.conv.parametrizations.weight.original1, "
        "decoder.model.1.block.0.alpha, decoder.model.1.block.1.conv.bias (+383 more); "
        "34 unexpected: codebook_embeddings.weight, embeddings.weight, fast_embeddings.weight, "
        "fast_layers.0.attention.k_norm.weight, fast_layers.0.attention.q_norm.weight (+29 more)"
    ]


def test_check_refuses_a_codec_whose_codes_the_model_cannot_produce(
    tiny_checkpoint: Path,
) -> None:
    ckpt = CheckpointFolder.open(tiny_checkpoint)
    codec = meta_codec(ckpt)
    assert _codec_facts(codec, ckpt.config, ckpt.file("codec.pth"))["codebooks"] == 10
    with pytest.raises(CheckpointError, match=r"codec\.pth: the codec has 10 codebooks"):
        _codec_facts(codec, {**ckpt.config, "num_codebooks": 8}, ckpt.file("codec.pth"))
    with pytest.raises(CheckpointError, match=r"codebooks hold 1024 codes.* codebook_size is 512"):
        _codec_facts(codec, {**ckpt.config, "codebook_size": 512}, ckpt.file("codec.pth"))


NOISE = """
import logging, warnings
import bitsandbytes
from dac.nn.layers import WNConv1d
WNConv1d(1, 1, 1)
import torch.utils.cpp_extension
"""
OTHERS = """
warnings.warn("an unrelated deprecation", FutureWarning)
ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure",
            ModuleNotFoundError("No module named 'kernels'"))
ops.warning("an unrelated bitsandbytes warning")
logging.getLogger("torch.utils.cpp_extension").warning("an unrelated extension warning")
"""


@pytest.mark.slow  # a fresh interpreter imports the engine
def test_startup_noise_is_silenced_and_other_warnings_are_kept() -> None:
    loud = _run("-c", NOISE)
    assert loud.returncode == 0, loud.stderr
    assert WEIGHT_NORM_MESSAGE in loud.stderr  # without the engine's filters it is printed
    assert (NO_CUDA_MESSAGE in loud.stderr) == (not torch.cuda.is_available())
    quiet = _run("-c", "import engine" + NOISE + OTHERS)
    assert quiet.returncode == 0, quiet.stderr
    assert WEIGHT_NORM_MESSAGE not in quiet.stderr
    assert BNB_MESSAGE not in quiet.stderr  # both the real import's record and the one above
    assert "FutureWarning: an unrelated deprecation" in quiet.stderr
    assert "an unrelated bitsandbytes warning" in quiet.stderr
    assert NO_CUDA_MESSAGE not in quiet.stderr
    assert "an unrelated extension warning" in quiet.stderr


def test_bitsandbytes_failures_other_than_the_missing_package_are_kept() -> None:
    result = _run(
        "-c",
        "import engine, logging\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "'Failed to load CPU gemm_4bit_forward from kernels-community: %s.', "
        "RuntimeError('kernel ABI mismatch'))",
    )
    assert "Failed to load CPU gemm_4bit_forward from kernels-community: kernel ABI mismatch" in (
        result.stderr
    )
