"""What a checkpoint folder holds, checked the way the engine loads it, without running it.

Both models are built on the ``meta`` device and the memory-mapped weights are assigned into them
by the same strict loader the engine uses, so a folder that passes here loads there; no weight is
copied or initialised, which keeps the check of the 3.6 GB release to seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.model.checkpoint import (
    REQUIRED_FILES,
    SYNTHETIC_MARKER,
    CheckpointError,
    CheckpointFolder,
    codec_weights,
    dual_ar_weights,
    load_strict,
)
from engine.model.upstream import meta_codec, meta_dual_ar

CONFIG_KEYS = (
    "dim",
    "n_layer",
    "n_fast_layer",
    "n_head",
    "n_local_heads",
    "vocab_size",
    "codebook_size",
    "num_codebooks",
    "max_seq_len",
)


@dataclass(frozen=True)
class WeightSummary:
    """One weight file as loaded: how many tensors and parameters, in which dtypes."""

    file: str
    tensors: int
    parameters: int
    dtypes: dict[str, int]


@dataclass(frozen=True)
class CheckpointReport:
    """Everything ``fishbench check`` prints about a usable folder."""

    path: Path
    files: dict[str, int]
    synthetic: dict[str, Any] | None
    content_hash: str
    config: dict[str, Any]
    tokenizer: dict[str, int]
    codec: dict[str, int]
    weights: tuple[WeightSummary, ...]


def _summary(module: torch.nn.Module, weights: dict[str, torch.Tensor], file: str) -> WeightSummary:
    dtypes = Counter(str(tensor.dtype).removeprefix("torch.") for tensor in weights.values())
    return WeightSummary(
        file=file,
        tensors=len(weights),
        parameters=sum(p.numel() for p in module.parameters()),
        dtypes=dict(dtypes.most_common()),
    )


def _check_dual_ar(ckpt: CheckpointFolder) -> tuple[torch.nn.Module, WeightSummary]:
    model = meta_dual_ar(ckpt)
    weights = dual_ar_weights(ckpt.file("model.pth"))
    load_strict(model, weights, ckpt.file("model.pth"))
    return model, _summary(model, weights, "model.pth")


def _check_codec(ckpt: CheckpointFolder) -> tuple[torch.nn.Module, WeightSummary]:
    codec = meta_codec(ckpt)
    weights = codec_weights(ckpt.file("codec.pth"))
    load_strict(codec, weights, ckpt.file("codec.pth"))
    return codec, _summary(codec, weights, "codec.pth")


def _codec_facts(codec: torch.nn.Module, config: dict[str, Any], path: Path) -> dict[str, int]:
    """The codec's code layout, refused when the DualAR model cannot produce its codes."""
    quantizer = codec.quantizer
    facts = {
        "sample_rate": int(codec.sample_rate),
        "samples_per_frame": int(codec.frame_length),
        "codebooks": 1 + int(quantizer.quantizer.n_codebooks),
        "semantic_codebook_size": int(quantizer.semantic_quantizer.codebook_size),
        "residual_codebook_size": int(quantizer.quantizer.codebook_size),
    }
    if facts["codebooks"] != config["num_codebooks"]:
        raise CheckpointError(
            f"{path}: the codec has {facts['codebooks']} codebooks, "
            f"config.json num_codebooks is {config['num_codebooks']}"
        )
    largest = max(facts["semantic_codebook_size"], facts["residual_codebook_size"])
    if largest > config["codebook_size"]:
        raise CheckpointError(
            f"{path}: the codec's codebooks hold {largest} codes, "
            f"config.json codebook_size is {config['codebook_size']}"
        )
    return facts


def check_checkpoint(path: str | Path) -> CheckpointReport:
    """Validate a checkpoint folder as the engine would load it; raise ``CheckpointError``."""
    ckpt = CheckpointFolder.open(path)
    model, dual_ar = _check_dual_ar(ckpt)
    codec, codec_summary = _check_codec(ckpt)
    tokenizer = model.tokenizer
    names = [*REQUIRED_FILES, *([SYNTHETIC_MARKER] if ckpt.is_synthetic else [])]
    return CheckpointReport(
        path=ckpt.path,
        files={name: ckpt.file(name).stat().st_size for name in names},
        synthetic=ckpt.synthetic,
        content_hash=ckpt.content_hash,
        config={key: ckpt.config.get(key) for key in CONFIG_KEYS},
        tokenizer={
            "bpe_ranks": tokenizer.vocab_size,
            "special_tokens": tokenizer.num_special_tokens,
            "im_end": tokenizer.get_token_id("<|im_end|>"),
            "semantic_begin": tokenizer.semantic_begin_id,
            "semantic_end": tokenizer.semantic_end_id,
        },
        codec=_codec_facts(codec, ckpt.config, ckpt.file("codec.pth")),
        weights=(dual_ar, codec_summary),
    )


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def to_text(report: CheckpointReport) -> str:
    """The report as a few aligned lines for a terminal."""
    kind = (
        f"synthetic ({report.synthetic.get('preset')} preset, seed {report.synthetic.get('seed')}"
        "): random weights, noise audio"
        if report.synthetic
        else "real (no SYNTHETIC.json)"
    )
    lines = [
        f"checkpoint {report.path}: usable",
        f"  weights    {kind}",
        f"  hash       {report.content_hash}",
        "  files      " + ", ".join(f"{n} {_size(s)}" for n, s in report.files.items()),
        f"  config     {_pairs(report.config)}",
        f"  tokenizer  {_pairs(report.tokenizer)}",
        f"  codec      {_pairs(report.codec)}",
    ]
    for summary in report.weights:
        dtypes = ", ".join(f"{dtype} x{count}" for dtype, count in summary.dtypes.items())
        lines.append(
            f"  {summary.file:<10} {summary.parameters:,} parameters in "
            f"{summary.tensors} tensors ({dtypes})"
        )
    return "\n".join(lines)
