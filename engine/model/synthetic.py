"""Synthetic checkpoints: the released S1-mini file format with seeded random weights.

The real weights are gated and cannot be downloaded here. A synthetic folder uses the same
upstream classes and files, so loading, speed and memory behave as with the real model; only the
sound is noise. ``SYNTHETIC.json`` marks such a folder so nothing reports a WER for it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from engine.errors import ConfigError
from engine.model.checkpoint import SYNTHETIC_MARKER, CheckpointFolder, load_codec_config
from engine.model.tokenizer_files import BASE_SPECIAL_TOKENS, write_tokenizer
from engine.model.upstream import build_dual_ar

log = logging.getLogger(__name__)

S1_MINI_CONFIG: dict[str, Any] = {
    "model_type": "dual_ar",
    "dim": 1024,
    "n_layer": 28,
    "n_head": 16,
    "n_local_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 155776,
    "tie_word_embeddings": False,
    "attention_qk_norm": True,
    "attention_qkv_bias": False,
    "attention_o_bias": False,
    "rope_base": 1000000.0,
    "norm_eps": 1e-6,
    "max_seq_len": 8192,
    "codebook_size": 4096,
    "num_codebooks": 10,
    "scale_codebook_embeddings": True,
    "initializer_range": 0.03125,
    "use_gradient_checkpointing": True,
    "n_fast_layer": 4,
    "fast_dim": 1024,
    "fast_n_head": 16,
    "fast_n_local_heads": 8,
    "fast_head_dim": 64,
    "fast_intermediate_size": 3072,
}

TINY_CONFIG: dict[str, Any] = {
    **S1_MINI_CONFIG,
    "dim": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_local_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_seq_len": 2048,
    "codebook_size": 1024,
    "n_fast_layer": 1,
    "fast_dim": 64,
    "fast_n_head": 4,
    "fast_n_local_heads": 2,
    "fast_head_dim": 16,
    "fast_intermediate_size": 128,
}


@dataclass(frozen=True)
class Preset:
    """Everything that differs between synthetic checkpoint sizes."""

    model: dict[str, Any]
    n_ranks: int
    codec_config: str


PRESETS = {
    "s1-mini": Preset(S1_MINI_CONFIG, n_ranks=151_643, codec_config="modded_dac_vq"),
    "tiny": Preset(TINY_CONFIG, n_ranks=512, codec_config="tiny"),
}


def _vocab_size(n_ids: int) -> int:
    """Round the id count up to a multiple of 64, as the released vocab (155,776) is."""
    return int(math.ceil(n_ids / 64) * 64)


def make_checkpoint(preset: str, out_dir: str | Path, seed: int = 0) -> CheckpointFolder:
    """Write a synthetic checkpoint folder; the same preset and seed give the same bytes."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)

    n_ids = write_tokenizer(folder, spec.n_ranks, spec.model["codebook_size"])
    config = {**spec.model, "vocab_size": _vocab_size(n_ids)}
    if preset == "s1-mini":
        assert config["vocab_size"] == S1_MINI_CONFIG["vocab_size"], config["vocab_size"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    torch.manual_seed(seed)
    model = build_dual_ar(folder, device="cpu")
    torch.save(
        {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, folder / "model.pth"
    )
    n_model = sum(p.numel() for p in model.parameters())
    del model

    torch.manual_seed(seed + 1)
    codec = instantiate(load_codec_config(spec.codec_config))
    torch.save(codec.state_dict(), folder / "codec.pth")
    n_codec = sum(p.numel() for p in codec.parameters())

    marker = {
        "synthetic": True,
        "preset": preset,
        "seed": seed,
        "codec_config": spec.codec_config,
        "special_tokens": len(BASE_SPECIAL_TOKENS),
        "parameters": {"dual_ar": n_model, "codec": n_codec},
        "note": "Random weights in the released format: faithful speed and memory, noise audio.",
    }
    (folder / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2))
    log.info(
        "wrote %s checkpoint to %s (%.1f M + %.1f M parameters)",
        preset,
        folder,
        n_model / 1e6,
        n_codec / 1e6,
    )
    return CheckpointFolder.open(folder)
