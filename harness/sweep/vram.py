"""Refuse, before it runs, a candidate whose memory cannot fit the hardware's VRAM budget.

A trial's peak reserved VRAM is gated once it has run (``harness.sweep.selection``). A candidate
the perf model already prices above the budget would only run into an OOM or that gate after
minutes of loading and compiling; ``max_batch`` makes that easy to ask for, since every batch
slot holds a KV cache of ``max_seq_len`` positions. So with a ``hardware.vram_budget_mb`` each
candidate's resolved profile is priced by ``engine.measure.perf_model.resident`` (weights in
their scheme, the KV caches: the batch-1 one plus one per padded slot, the tables, and the
codec's decoding modules, counted on the ``meta`` device as the engine keeps them on CUDA), and
one above the budget is SKIPPED with the figures as its reason. Resident bytes are what the
engine holds between requests, a lower bound of its peak (activations, the allocator's slack
and the CUDA context come on top): a refused candidate could not have fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from fish_speech.models.text2semantic.llama import DualARModelArgs
from hydra.utils import instantiate

from engine.codec import encode_only_modules, fuse_weight_norm
from engine.measure import perf_model
from engine.model.checkpoint import CheckpointFolder
from engine.profile import DTYPES, EngineProfile, Hardware, batch_size, resolve_profile
from harness.sweep.config import SweepConf

META = torch.device("meta")


def codec_decode_bytes(codec_config: Any) -> dict[str, int]:
    """Bytes of the codec modules decoding keeps on a CUDA device, per precision: built on the
    ``meta`` device (nothing allocated), weight norm fused as the engine fuses it, the
    encode-only modules left out as the engine parks them on the host."""
    sizes = {}
    for precision, dtype in DTYPES.items():
        with META:  # built in fp32 and cast, as the engine loads it
            codec = instantiate(codec_config).to(dtype)
        fuse_weight_norm(codec)
        held = perf_model.module_bytes(codec, META)
        sizes[precision] = held - sum(
            perf_model.module_bytes(m, META) for m in encode_only_modules(codec)
        )
    return sizes


def _codebook_sizes(codec_config: Any) -> tuple[int, int]:
    """The semantic and residual codebook sizes (the engine's sliced output heads)."""
    quantizer = codec_config.quantizer
    return int(quantizer.semantic_codebook_size), int(quantizer.codebook_size)


@dataclass(frozen=True)
class VramBound:
    """The budget and what the perf model needs to price a profile on one checkpoint."""

    budget_mb: float
    model: DualARModelArgs
    semantic_size: int
    residual_size: int
    codec_bytes: dict[str, int]  # by precision (``codec_decode_bytes``)

    @classmethod
    def from_configs(
        cls, budget_mb: float, model_config: dict[str, Any], codec_config: Any
    ) -> VramBound:
        """From a checkpoint's ``config.json`` contents and its codec's Hydra config."""
        return cls(
            budget_mb,
            DualARModelArgs(**model_config),
            *_codebook_sizes(codec_config),
            codec_decode_bytes(codec_config),
        )

    @classmethod
    def for_sweep(cls, conf: SweepConf, checkpoint: CheckpointFolder | None) -> VramBound | None:
        """The sweep's bound: None without a VRAM budget (a CPU) or without a checkpoint."""
        budget = conf.hardware.vram_budget_mb
        if budget is None or conf.hardware.device != "cuda" or checkpoint is None:
            return None
        return cls.from_configs(budget, checkpoint.config, checkpoint.codec_config())

    def resident(self, active: EngineProfile) -> perf_model.ResidentBytes:
        """What the engine would hold under a resolved profile (its model's RoPE table and mask
        are built for the profile's ``max_seq_len``, as the engine loads it)."""
        model = replace(self.model, max_seq_len=min(active.max_seq_len, self.model.max_seq_len))
        return perf_model.resident(
            model,
            active,
            active.max_seq_len,
            self.semantic_size,
            self.residual_size,
            self.codec_bytes[active.precision],
        )

    def refusal(self, requested: EngineProfile, hw: Hardware) -> str | None:
        """Why ``requested`` cannot fit the budget on ``hw``, or None when it may."""
        active, _ = resolve_profile(requested, hw, self.model.max_seq_len, log_fallbacks=False)
        parts = self.resident(active)
        total = parts.total / 2**20
        if total <= self.budget_mb:
            return None
        slots = batch_size(active.max_batch) if active.max_batch > 1 else 0
        caches = f"{1 + slots} caches" if slots else "1 cache"
        return (
            f"the perf model's resident memory, {total:.0f} MB, exceeds hardware.vram_budget_mb "
            f"{self.budget_mb:g} MB before any activation: weights {parts.weights / 2**20:.0f} MB, "
            f"KV {parts.kv_cache / 2**20:.0f} MB ({caches} of {active.max_seq_len} positions at "
            f"max_batch={active.max_batch}), codec {parts.codec / 2**20:.0f} MB"
        )
