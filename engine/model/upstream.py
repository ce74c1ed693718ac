"""Building the upstream fish-speech model classes from a checkpoint folder.

Weights are assigned onto modules built on the ``meta`` device (no random init of 860 M
parameters just to overwrite them); the non-persistent buffers are then rebuilt on the target
device, and nothing may be left on ``meta``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from fish_speech.models.dac.modded_dac import DAC
from fish_speech.models.text2semantic.llama import (
    BaseModelArgs,
    DualARTransformer,
    precompute_freqs_cis,
)
from fish_speech.tokenizer import FishTokenizer
from hydra.utils import instantiate

from engine.model.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    codec_weights,
    dual_ar_weights,
    load_strict,
)

log = logging.getLogger(__name__)


def build_dual_ar(folder: Path, device: str | torch.device = "cpu") -> DualARTransformer:
    """A randomly initialised DualARTransformer for the folder's config and tokenizer."""
    config = BaseModelArgs.from_pretrained(str(folder))
    tokenizer = FishTokenizer.from_pretrained(str(folder))
    with torch.device(device):
        return DualARTransformer(config, tokenizer=tokenizer)


def _rebuild_buffers(model: DualARTransformer, device: torch.device) -> None:
    cfg = model.config
    model.freqs_cis = precompute_freqs_cis(cfg.max_seq_len, cfg.head_dim, cfg.rope_base).to(device)
    model.fast_freqs_cis = precompute_freqs_cis(
        cfg.num_codebooks, cfg.fast_head_dim, cfg.rope_base
    ).to(device)
    model.causal_mask = torch.tril(
        torch.ones(cfg.max_seq_len, cfg.max_seq_len, dtype=torch.bool, device=device)
    )


def _assert_materialised(module: torch.nn.Module, name: str) -> None:
    left = [k for k, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{name}: {len(left)} tensors left unloaded, e.g. {left[:3]}")


def meta_dual_ar(ckpt: CheckpointFolder, max_seq_len: int | None = None) -> DualARTransformer:
    """The folder's DualAR transformer on the ``meta`` device, its tokenizer checked against
    its config; nothing is allocated until weights are assigned."""
    _ = ckpt.config  # refuses a config.json that is not JSON or not a dual_ar model
    try:
        config = BaseModelArgs.from_pretrained(str(ckpt.path))
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.file('config.json')} is not a DualAR config: {exc}") from exc
    if max_seq_len is not None:
        config.max_seq_len = min(max_seq_len, config.max_seq_len)
    try:
        tokenizer = FishTokenizer.from_pretrained(str(ckpt.path))
    except Exception as exc:
        raise CheckpointError(f"{ckpt.file('tokenizer.tiktoken')} cannot be loaded: {exc}") from exc
    semantic_end = tokenizer.semantic_end_id
    if semantic_end >= config.vocab_size:
        raise CheckpointError(
            f"{ckpt.file('special_tokens.json')}: semantic ids reach {semantic_end}, "
            f"beyond vocab_size {config.vocab_size} in config.json"
        )
    with torch.device("meta"):
        return DualARTransformer(config, tokenizer=tokenizer)


def meta_codec(ckpt: CheckpointFolder) -> DAC:
    """The folder's codec built on the ``meta`` device, for checking keys and shapes only (its
    non-persistent buffers stay unallocated, so it cannot run)."""
    with torch.device("meta"):
        return instantiate(ckpt.codec_config())


def load_dual_ar(
    ckpt: CheckpointFolder, device: torch.device, dtype: torch.dtype, max_seq_len: int | None = None
) -> DualARTransformer:
    """The DualAR transformer with ``model.pth`` loaded strictly, in ``dtype`` on ``device``."""
    model = meta_dual_ar(ckpt, max_seq_len)
    load_strict(model, dual_ar_weights(ckpt.file("model.pth")), ckpt.file("model.pth"))
    _rebuild_buffers(model, torch.device("cpu"))
    model = model.to(device=device, dtype=dtype)
    _assert_materialised(model, str(ckpt.file("model.pth")))
    return model.eval().requires_grad_(False)


def load_codec(ckpt: CheckpointFolder, device: torch.device, dtype: torch.dtype) -> DAC:
    """The upstream DAC codec with ``codec.pth`` loaded strictly."""
    cfg = ckpt.codec_config()
    torch.manual_seed(0)
    codec = instantiate(cfg)
    load_strict(codec, codec_weights(ckpt.file("codec.pth")), ckpt.file("codec.pth"))
    return codec.to(device=device, dtype=dtype).eval().requires_grad_(False)
