"""Synthetic checkpoints are in the released format and loading is strict."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from engine.engine import OptimizedFishSpeech
from engine.model.checkpoint import (
    REQUIRED_FILES,
    CheckpointError,
    CheckpointFolder,
    load_codec_config,
)
from engine.model.synthetic import make_checkpoint
from engine.model.tokenizer_files import special_tokens


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tiny_checkpoint_has_the_released_files_and_a_synthetic_marker(
    tiny_checkpoint: Path,
) -> None:
    for name in REQUIRED_FILES:
        assert (tiny_checkpoint / name).is_file(), name
    folder = CheckpointFolder.open(tiny_checkpoint)
    assert folder.is_synthetic and folder.synthetic["preset"] == "tiny"
    weights = torch.load(tiny_checkpoint / "model.pth", weights_only=True)
    assert weights["output.weight"].dtype == torch.bfloat16
    assert "codebook_embeddings.weight" in weights


def test_same_seed_gives_the_same_bytes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    again = make_checkpoint("tiny", tmp_path / "again", seed=0).path
    for name in REQUIRED_FILES:
        assert _sha(again / name) == _sha(tiny_checkpoint / name), name
    other = make_checkpoint("tiny", tmp_path / "other", seed=1).path
    assert _sha(other / "model.pth") != _sha(tiny_checkpoint / "model.pth")


def test_semantic_token_ids_follow_the_released_numbering() -> None:
    ids = special_tokens(151_643, 4096)
    assert ids["<|im_end|>"] == 151_647
    assert ids["<|semantic:0|>"] == 151_658
    assert ids["<|semantic:4095|>"] == 155_753


def test_s1_mini_config_is_the_released_one() -> None:
    from engine.model.synthetic import PRESETS

    cfg = PRESETS["s1-mini"].model
    assert (
        cfg["dim"],
        cfg["n_layer"],
        cfg["n_fast_layer"],
        cfg["vocab_size"],
        cfg["num_codebooks"],
    ) == (
        1024,
        28,
        4,
        155_776,
        10,
    )


def test_truncated_model_is_refused_naming_the_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "truncated")
    data = (bad / "model.pth").read_bytes()
    (bad / "model.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pth"):
        OptimizedFishSpeech.from_checkpoint(bad)


def test_codec_from_a_different_config_is_refused_naming_keys(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "othercodec")
    cfg = load_codec_config("tiny")
    cfg.decoder_dim = 128
    other = instantiate(cfg)
    torch.save(other.state_dict(), bad / "codec.pth")
    with pytest.raises(
        CheckpointError, match=r"codec\.pth does not match the model: .*shape mismatch: decoder\."
    ):
        OptimizedFishSpeech.from_checkpoint(bad)


def test_model_with_missing_keys_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "missing")
    weights = torch.load(bad / "model.pth", weights_only=True)
    del weights["fast_output.weight"]
    torch.save(weights, bad / "model.pth")
    with pytest.raises(CheckpointError, match=r"1 missing: fast_output\.weight"):
        OptimizedFishSpeech.from_checkpoint(bad)


def test_missing_config_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "noconfig")
    (bad / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        OptimizedFishSpeech.from_checkpoint(bad)


def test_wrong_model_type_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "naive")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "naive"}))
    with pytest.raises(CheckpointError, match="model_type 'naive'"):
        _ = CheckpointFolder.open(bad).config


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointFolder.open(tmp_path / "nowhere")


def test_layouts_upstream_converts_on_load_are_accepted(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    legacy = _copy(tiny_checkpoint, tmp_path / "legacy")
    weights = torch.load(legacy / "model.pth", weights_only=True)
    prefix = "layers.0.attention."
    cfg = json.loads((legacy / "config.json").read_text())
    q_rows, kv_rows = cfg["n_head"] * cfg["head_dim"], cfg["n_local_heads"] * cfg["head_dim"]
    fused = weights.pop(prefix + "wqkv.weight")
    wq, wk, wv = fused.split([q_rows, kv_rows, kv_rows])
    weights.update({prefix + "wq.weight": wq, prefix + "wk.weight": wk, prefix + "wv.weight": wv})
    torch.save(weights, legacy / "model.pth")
    loaded = OptimizedFishSpeech.from_checkpoint(legacy).decoder.model
    assert torch.equal(loaded.layers[0].attention.wqkv.weight, fused.float())


def test_released_codec_config_is_the_one_upstream_ships() -> None:
    cfg = load_codec_config("modded_dac_vq")
    assert cfg.quantizer.semantic_codebook_size == 4096 and cfg.quantizer.n_codebooks == 9
