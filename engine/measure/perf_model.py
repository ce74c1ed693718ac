"""Bytes read per generated frame, by part: the one performance model bench and sweep share.

At batch 1 a frame is memory-bound: every weight of the slow transformer is read once, the fast
transformer's once per codebook, the heads, and the K/V cache at the length attended. This model
computes those bytes from the checkpoint's config and the quantization scheme's storage format
(it is checked against the loaded tensors' sizes in the tests), for our engine and for upstream.

Upstream differs in three ways: its slow head covers all 155,776 tokens, its fast head all 4,096
codes on every one of the ten fast calls, and its attention reads the whole static cache
(config ``max_seq_len``) and expands K/V with ``repeat_interleave``: K/V are read once, the
expanded copy written and read again.

Not counted (under 0.1 % of a frame): embedding rows, norms of the final hidden states, sampling.

``resident`` is the other figure: the bytes the engine holds in device memory between requests
(weights in their scheme, KV caches, tables, the codec's decode side), equal to the bytes of the
tensors it holds (tested to the byte), so ``torch.cuda.memory_allocated()`` after load reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from fish_speech.models.text2semantic.llama import BaseModelArgs
from torch.multiprocessing.reductions import StorageWeakRef

from engine.profile import EngineProfile, batch_size
from engine.sampling import REPETITION_WINDOW

FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BLOCK = 64  # bitsandbytes' block size: one absmax per 64 weights, itself stored as 8 bits
NF4_NESTED_BLOCK = 256  # with an fp32 absmax per 256 of those (compress_statistics, the default)


@dataclass(frozen=True)
class FrameBytes:
    """Bytes one frame reads, by part."""

    slow_layers: int
    fast_layers: int
    heads: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.slow_layers + self.fast_layers + self.heads + self.kv_cache

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"total": self.total}


def linear_bytes(
    out_features: int, in_features: int, scheme: str, float_bytes: int, group_size: int = 64
) -> int:
    """Stored bytes of one linear layer's weight under ``scheme`` (no bias: S1 has none).

    int8: one int8 per weight + a per-output-channel scale in the float dtype (weight-only), or
    a per-tensor scale (CPU fp32 dynamic int8, whose scale is not a stored tensor).
    int8-vnni: int8 with the VNNI kernel's int32 sum of each output channel's codes beside it.
    int4: two weights per byte + a scale and a zero point per group of ``group_size``.
    nf4: two weights per byte + an 8-bit absmax per block of 64 + an fp32 per 256 such blocks.
    """
    weights = out_features * in_features
    if scheme == "none":
        return weights * float_bytes
    if scheme == "int8":
        return weights + (out_features * float_bytes if float_bytes < 4 else 0)
    if scheme == "int8-vnni":
        return linear_bytes(out_features, in_features, "int8", float_bytes) + 4 * out_features
    if scheme == "int4":
        return weights // 2 + 2 * out_features * (in_features // group_size) * float_bytes
    if scheme == "nf4":
        blocks = weights // NF4_BLOCK
        return weights // 2 + blocks + -(-blocks // NF4_NESTED_BLOCK) * 4
    raise ValueError(f"unknown quantization scheme {scheme!r}")


def _layer_bytes(
    dim: int,
    n_head: int,
    n_local_heads: int,
    head_dim: int,
    intermediate: int,
    qk_norm: bool,
    scheme: str,
    float_bytes: int,
    group_size: int,
) -> int:
    shapes = [
        ((n_head + 2 * n_local_heads) * head_dim, dim),  # wqkv
        (dim, n_head * head_dim),  # wo
        (intermediate, dim),  # w1
        (intermediate, dim),  # w3
        (dim, intermediate),  # w2
    ]
    linears = sum(linear_bytes(o, i, scheme, float_bytes, group_size) for o, i in shapes)
    norms = (2 * dim + (2 * head_dim if qk_norm else 0)) * float_bytes
    return linears + norms


def _stack_bytes(
    cfg: BaseModelArgs, prefix: str, layers: int, scheme: str, float_bytes: int, group_size: int
) -> int:
    """Bytes of a layer stack whose config fields carry ``prefix`` ("" slow, "fast_" fast)."""

    def field(name: str) -> Any:
        return getattr(cfg, prefix + name)

    return layers * _layer_bytes(
        field("dim"),
        field("n_head"),
        field("n_local_heads"),
        field("head_dim"),
        field("intermediate_size"),
        field("attention_qk_norm"),
        scheme,
        float_bytes,
        group_size,
    )


def slow_layer_bytes(cfg: BaseModelArgs, scheme: str, float_bytes: int, group_size: int) -> int:
    """Bytes of all slow-transformer layers (read once per frame)."""
    return _stack_bytes(cfg, "", cfg.n_layer, scheme, float_bytes, group_size)


def fast_layer_bytes(cfg: BaseModelArgs, scheme: str, float_bytes: int, group_size: int) -> int:
    """Bytes of all fast-transformer layers (read once per codebook)."""
    return _stack_bytes(cfg, "fast_", cfg.n_fast_layer, scheme, float_bytes, group_size)


def _kv_bytes(layers: int, heads: int, head_dim: int, length: int, float_bytes: int) -> int:
    return layers * 2 * heads * head_dim * length * float_bytes


def _scheme(profile: EngineProfile) -> str:
    """The storage scheme of a *resolved* profile's linear layers (S1's all fit the VNNI kernel)."""
    vnni = profile.quantization == "int8" and profile.int8_kernel in ("vnni", "amx")
    return "int8-vnni" if vnni else profile.quantization


def ours(
    cfg: BaseModelArgs,
    profile: EngineProfile,
    kv_len: int,
    semantic_size: int = 4096,
    residual_size: int = 1024,
    rows: int = 1,
) -> FrameBytes:
    """Our engine under a *resolved* profile, attending over a ``kv_len`` bucket.

    A batched step of ``rows`` requests reads the weights and heads once and each request's own
    K/V: per frame made, the weights cost 1/rows of a batch-1 frame's.
    """
    fb = FLOAT_BYTES[profile.precision]
    scheme, group = _scheme(profile), profile.int4_group_size
    steps = cfg.num_codebooks
    fast_kv = sum(
        _kv_bytes(cfg.n_fast_layer, cfg.fast_n_local_heads, cfg.fast_head_dim, steps, fb)
        for _ in range(steps)
    )
    return FrameBytes(
        slow_layers=slow_layer_bytes(cfg, scheme, fb, group),
        fast_layers=steps * fast_layer_bytes(cfg, scheme, fb, group),
        heads=((semantic_size + 1) * cfg.dim + (steps - 1) * residual_size * cfg.fast_dim) * fb,
        kv_cache=rows
        * (_kv_bytes(cfg.n_layer, cfg.n_local_heads, cfg.head_dim, kv_len, fb) + fast_kv),
    )


@dataclass(frozen=True)
class ResidentBytes:
    """Bytes the engine keeps in device memory between requests, by part."""

    weights: int  # DualAR: layers (in their scheme), embeddings, norms, the two sliced heads
    kv_cache: int  # slow cache at max_seq_len + the fast cache (num_codebooks positions)
    tables: int  # RoPE tables, the causal mask, the decoder's sampling state
    codec: int  # the codec modules decoding uses (encode-only ones stay on the host on CUDA)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.tables + self.codec

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"total": self.total}


def module_bytes(module: torch.nn.Module, device: torch.device) -> int:
    """Bytes of the distinct storages behind ``module``'s parameters and buffers on ``device``'s
    type (the engine uses one device)."""
    storages: dict[StorageWeakRef, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == device.type:
            storage = t.untyped_storage()
            storages[StorageWeakRef(storage)] = storage.nbytes()
    return sum(storages.values())


def resident(
    cfg: BaseModelArgs,
    profile: EngineProfile,
    max_seq_len: int,
    semantic_size: int,
    residual_size: int,
    codec_bytes: int,
) -> ResidentBytes:
    """Our engine's device memory under a *resolved* profile (fp16/bf16/fp32 tensors; CPU fp32
    int8 is dynamic, its packed weights are not tensors this model can count).

    With ``max_batch > 1`` every padded batch row is a slot with its own KV cache row beside the
    batch-1 cache its prompt is prefilled on: KV memory is (1 + rows) times one request's.

    ``cfg.max_seq_len`` is the loaded model's (the RoPE table and causal mask length);
    ``max_seq_len`` the KV cache's. The codec's part is counted from its modules
    (``codec_bytes``): its config is not the DualAR's.
    """
    fb = FLOAT_BYTES[profile.precision]
    scheme, group = _scheme(profile), profile.int4_group_size
    steps = cfg.num_codebooks
    project = (cfg.dim + 1) * cfg.fast_dim if cfg.dim != cfg.fast_dim else 0
    floats = (
        cfg.vocab_size * cfg.dim  # token embeddings
        + steps * cfg.codebook_size * cfg.dim  # codebook embeddings
        + cfg.codebook_size * cfg.fast_dim  # fast embeddings
        + project
        + cfg.dim
        + cfg.fast_dim  # final norms
        + (semantic_size + 1) * cfg.dim
        + residual_size * cfg.fast_dim  # sliced heads
    )
    layers = slow_layer_bytes(cfg, scheme, fb, group) + fast_layer_bytes(cfg, scheme, fb, group)
    rope = (cfg.max_seq_len * cfg.head_dim + steps * cfg.fast_head_dim) * fb
    sampling = 3 * 4 + 4 + (steps * REPETITION_WINDOW + steps) * 8
    one_kv = _kv_bytes(cfg.n_layer, cfg.n_local_heads, cfg.head_dim, max_seq_len, fb)
    one_kv += _kv_bytes(cfg.n_fast_layer, cfg.fast_n_local_heads, cfg.fast_head_dim, steps, fb)
    rows = batch_size(profile.max_batch) if profile.max_batch > 1 else 0
    per_row = (
        (1 + steps) * 8 * (1 + max_seq_len)  # the frame fed in, and the frames made so far
        + 8  # position
        + cfg.dim * fb  # a fresh request's prefill hidden state
        + 1  # fresh flag
        + (3 + 1) * 4  # sampling settings, end-of-speech bias
        + steps * (REPETITION_WINDOW + 1) * 8  # repetition window, fast positions
        + (semantic_size + 1 + (steps - 1) * residual_size) * 4  # the next frame's noise
    )
    return ResidentBytes(
        weights=layers + floats * fb,
        kv_cache=(1 + rows) * one_kv,
        tables=rope + cfg.max_seq_len**2 + sampling + rows * per_row,
        codec=codec_bytes,
    )


def upstream(cfg: BaseModelArgs, precision: str) -> FrameBytes:
    """Upstream's ``decode_one_token_ar`` in ``precision`` (bf16 on GPU, fp32 on CPU)."""
    fb = FLOAT_BYTES[precision]
    steps = cfg.num_codebooks
    expand = cfg.n_local_heads + 2 * cfg.n_head  # read K/V, write and read the expanded copy
    fast_expand = cfg.fast_n_local_heads + 2 * cfg.fast_n_head
    slow_len = -(-cfg.max_seq_len // 8) * 8
    return FrameBytes(
        slow_layers=slow_layer_bytes(cfg, "none", fb, 64),
        fast_layers=steps * fast_layer_bytes(cfg, "none", fb, 64),
        heads=(cfg.vocab_size * cfg.dim + steps * cfg.codebook_size * cfg.fast_dim) * fb,
        kv_cache=_kv_bytes(cfg.n_layer, expand, cfg.head_dim, slow_len, fb)
        + steps * _kv_bytes(cfg.n_fast_layer, fast_expand, cfg.fast_head_dim, steps, fb),
    )


def gpu_projection(cfg: BaseModelArgs, kv_len: int = 2048) -> dict[str, FrameBytes]:
    """Bytes per frame of the GPU rows (bf16 weights) at a ``kv_len`` bucket, and upstream's."""
    rows = {"upstream (bf16)": upstream(cfg, "bf16")}
    for scheme in ("none", "int8", "int4"):
        profile = EngineProfile(device="cuda", precision="bf16", quantization=scheme)
        rows[f"ours bf16 {scheme}"] = ours(cfg, profile, kv_len)
    return rows
