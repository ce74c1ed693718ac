"""Every state_dict layout upstream's two loaders accept loads here, and what is kept is still
loaded strictly.

Upstream's codec loader takes a Lightning training checkpoint and keeps only its ``generator.``
keys; its DualAR loader strips the TextToSemantic ``model.`` prefix and drops ``audio_*`` tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.model.checkpoint import CheckpointError, CheckpointFolder
from engine.model.upstream import load_codec, load_dual_ar

Weights = dict[str, torch.Tensor]
CPU = torch.device("cpu")


def _folder_with(tiny_checkpoint: Path, folder: Path, name: str, data: object) -> CheckpointFolder:
    """A checkpoint folder that links the tiny checkpoint's files but holds its own ``name``."""
    folder.mkdir()
    for source in tiny_checkpoint.iterdir():
        if source.name != name:
            (folder / source.name).symlink_to(source)
    torch.save(data, folder / name)
    return CheckpointFolder.open(folder)


def _weights(path: Path) -> Weights:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _discriminator() -> Weights:
    """Stand-in for a GAN discriminator's tensors, saved next to the generator in training."""
    return {
        f"discriminator.discriminators.{i}.convs.{j}.weight": torch.randn(8, 4, 3)
        for i in range(3)
        for j in range(4)
    } | {"discriminator.discriminators.0.conv_post.bias": torch.zeros(1)}


def _lightning_codec(plain: Weights) -> object:
    extra = _discriminator() | {"mel_transform.fb": torch.zeros(4, 4)}
    return {"state_dict": {f"generator.{k}": v for k, v in plain.items()} | extra}


CODEC_LAYOUTS: dict[str, Callable[[Weights], object]] = {
    "lightning generator+discriminator": _lightning_codec,
    "generator+discriminator, no wrapper": lambda w: (
        {f"generator.{k}": v for k, v in w.items()} | _discriminator()
    ),
    "state_dict wrapper": lambda w: {"state_dict": dict(w)},
}


@pytest.fixture(scope="module")
def reference_codec(tiny_checkpoint: Path) -> Weights:
    codec = load_codec(CheckpointFolder.open(tiny_checkpoint), CPU, torch.float32)
    return codec.state_dict()


def _assert_same(loaded: Weights, reference: Weights) -> None:
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("layout", list(CODEC_LAYOUTS))
def test_codec_layouts_upstream_accepts_load_identical_weights(
    layout: str, tiny_checkpoint: Path, tmp_path: Path, reference_codec: Weights
) -> None:
    data = CODEC_LAYOUTS[layout](_weights(tiny_checkpoint / "codec.pth"))
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "codec.pth", data)
    _assert_same(load_codec(folder, CPU, torch.float32).state_dict(), reference_codec)


def test_training_checkpoint_says_what_it_ignored(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _lightning_codec(_weights(tiny_checkpoint / "codec.pth"))
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "codec.pth", data)
    with caplog.at_level(logging.INFO, logger="engine.model.checkpoint"):
        load_codec(folder, CPU, torch.float32)
    assert "ignoring 14 others (discriminator.*, mel_transform.*)" in caplog.text


def _drop(key: str) -> Callable[[Weights], Weights]:
    return lambda w: {k: v for k, v in w.items() if k != key}


def _reshape(key: str) -> Callable[[Weights], Weights]:
    return lambda w: w | {key: torch.zeros(*w[key].shape[:-1], w[key].shape[-1] + 1)}


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (_drop("decoder.model.0.conv.bias"), r"1 missing: decoder\.model\.0\.conv\.bias"),
        (
            _reshape("decoder.model.0.conv.bias"),
            r"1 shape mismatch: decoder\.model\.0\.conv\.bias",
        ),
        (
            lambda w: w | {"decoder.extra.weight": torch.zeros(2)},
            r"1 unexpected: decoder\.extra\.weight",
        ),
    ],
    ids=["missing", "shape", "unexpected"],
)
def test_the_kept_generator_part_is_still_loaded_strictly(
    change: Callable[[Weights], Weights], refusal: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    data = _lightning_codec(change(_weights(tiny_checkpoint / "codec.pth")))
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "codec.pth", data)
    with pytest.raises(CheckpointError, match=rf"codec\.pth does not match the model: {refusal}"):
        load_codec(folder, CPU, torch.float32)


def test_lightning_dual_ar_loads_identical_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    plain = _weights(tiny_checkpoint / "model.pth")
    lightning = {f"model.{k}": v for k, v in plain.items()} | {
        "model.audio_decoder.weight": torch.zeros(3)
    }
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "model.pth", {"state_dict": lightning})
    loaded = load_dual_ar(folder, CPU, torch.bfloat16).state_dict()
    for key, value in plain.items():
        assert torch.equal(loaded[key], value), key


def test_lightning_dual_ar_with_a_missing_key_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    plain = _weights(tiny_checkpoint / "model.pth")
    lightning = {f"model.{k}": v for k, v in plain.items() if k != "norm.weight"}
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "model.pth", {"state_dict": lightning})
    with pytest.raises(CheckpointError, match=r"1 missing: norm\.weight"):
        load_dual_ar(folder, CPU, torch.bfloat16)


def test_upstream_prequantized_model_is_refused_with_the_way_out(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    plain = _weights(tiny_checkpoint / "model.pth")
    scales = torch.ones(plain["output.weight"].shape[0], dtype=torch.bfloat16)
    quantized = plain | {"output.weight": plain["output.weight"].to(torch.int8)}
    quantized["output.scales"] = scales
    folder = _folder_with(tiny_checkpoint, tmp_path / "ck", "model.pth", quantized)
    with pytest.raises(CheckpointError, match=r"pre-quantized weights \(output\.scales.*profile"):
        load_dual_ar(folder, CPU, torch.bfloat16)
