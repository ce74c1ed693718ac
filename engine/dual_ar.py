"""Forward passes over the upstream DualARTransformer's own modules, shaped for decoding.

Upstream's ``forward_generate`` computes logits over all 155,776 tokens every frame, expands the
grouped KV cache with ``repeat_interleave`` in every layer and attends over the whole static cache.
These functions run the same modules and weights but return hidden states (the caller applies a
sliced head), attend over the first ``kv_len`` cache positions only (a length bucket), and group
the query heads per KV head instead of expanding K/V, so SDPA sees equal head counts and a fused
kernel (flash on CPU, memory-efficient or cuDNN on CUDA) runs instead of the math fallback, which
upcasts to fp32 and materialises the expanded K/V.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import Attention, DualARTransformer, apply_rotary_emb
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

# SDPA without its math path: a fused kernel or an error, never a silent fp32 K/V copy.
FUSED_SDPA = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]


def embed(model: DualARTransformer, inp: Tensor) -> Tensor:
    """Token + codebook embeddings of ``inp`` [B, 1 + num_codebooks, T] -> [B, T, dim]."""
    cfg = model.config
    offsets = torch.arange(cfg.num_codebooks, device=inp.device)[None, :, None] * cfg.codebook_size
    vq = model.codebook_embeddings(inp[:, 1:] + offsets).sum(dim=1)
    tok = model.tokenizer
    is_vq = (inp[:, 0] >= tok.semantic_begin_id) & (inp[:, 0] <= tok.semantic_end_id)
    x = model.embeddings(inp[:, 0]) + vq * is_vq[..., None]
    if cfg.scale_codebook_embeddings:
        x = torch.where(is_vq[..., None], x / math.sqrt(cfg.num_codebooks + 1), x)
    return x


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of ``q`` [B, H, T, D] over ``k``/``v`` [B, Hkv, L, D] without expanding K/V;
    returns [B, T, H * D], the layout the output projection reads.

    The H query heads are viewed as Hkv groups of H/Hkv rows (head h reads KV head h // group, as
    upstream's ``repeat_interleave`` does), so each KV head is read once, in the model's dtype.
    ``mask`` [1, 1, T, L] is boolean (True = attend).

    The kernel's output layout differs by backend: CPU flash writes it contiguous, CUDA's
    memory-efficient kernel (the one a masked call gets on sm80-sm89, and in fp32 everywhere)
    writes [B, rows, Hkv, D] memory transposed to [B, Hkv, rows, D], cuDNN follows the query's
    layout. Splitting the rows back into (group, T) is a view in every layout; the one
    ``reshape`` to [B, T, H * D] is free when the layout already matches (CPU decode) and is
    otherwise the single copy the output projection needs anyway.
    """
    b, h, t, d = q.shape
    groups = h // k.shape[1]
    q = q.reshape(b, k.shape[1], groups * t, d)
    if groups > 1 and t > 1:
        mask = mask.repeat(1, 1, groups, 1)
    with sdpa_kernel(FUSED_SDPA):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.unflatten(2, (groups, t)).permute(0, 3, 1, 2, 4).reshape(b, t, h * d)


def attention(
    attn: Attention,
    x: Tensor,
    freqs_cis: Tensor,
    mask: Tensor,
    input_pos: Tensor | None,
    kv_len: int | None = None,
) -> Tensor:
    """Upstream ``Attention`` over its cache's first ``kv_len`` positions when ``input_pos`` is
    given (the new K/V are written at ``input_pos`` first), over ``x`` alone (causal) otherwise.

    ``input_pos`` [T] places every row's T tokens at the same positions of ``attn.kv_cache``
    (upstream's cache, one request). ``input_pos`` [B, 1] gives each row its own position in
    ``attn.slot_cache``, one cache row per request decoding together (``freqs_cis`` is then
    [B, 1, D/2, 2], one rotation per row).
    """
    bsz, seqlen, _ = x.shape
    q_size = attn.n_head * attn.head_dim
    kv_size = attn.n_local_heads * attn.head_dim
    q, k, v = attn.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(bsz, seqlen, attn.n_head, attn.head_dim)
    k = k.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    v = v.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    if attn.attention_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = _rotate(q, freqs_cis).transpose(1, 2)
    k = _rotate(k, freqs_cis).transpose(1, 2)
    v = v.transpose(1, 2)
    if input_pos is not None and input_pos.dim() == 2:
        k, v = _write_rows(attn.slot_cache, input_pos, k, v, kv_len)
    elif input_pos is not None:
        k, v = attn.kv_cache.update(input_pos, k, v)
        k, v = k[:, :, :kv_len], v[:, :, :kv_len]
    return attn.wo(grouped_attention(q, k, v, mask))


def _rotate(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Upstream's rotary embedding; per-row positions ([B, 1, D/2, 2] tables, one token per row)
    go through it with rows in the sequence axis, the same arithmetic on every element."""
    if freqs_cis.dim() == 4:
        return apply_rotary_emb(x.transpose(0, 1), freqs_cis).transpose(0, 1)
    return apply_rotary_emb(x, freqs_cis)


def _write_rows(cache, input_pos: Tensor, k: Tensor, v: Tensor, kv_len: int | None):
    """Write row b's one new K/V at ``input_pos[b]`` of cache row b; the rows' first ``kv_len``
    positions, as views (no copy)."""
    rows = torch.arange(k.shape[0], device=k.device)
    cache.k_cache[rows, :, input_pos[:, 0]] = k[:, :, 0]
    cache.v_cache[rows, :, input_pos[:, 0]] = v[:, :, 0]
    n = k.shape[0]
    return cache.k_cache[:n, :, :kv_len], cache.v_cache[:n, :, :kv_len]


def causal_mask(table: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
    """The boolean mask of ``input_pos`` over the first ``kv_len`` positions: [1, 1, T, kv_len]
    for shared positions [T], [B, 1, 1, kv_len] for per-row positions [B, 1]."""
    if input_pos.dim() == 2:
        return table[input_pos[:, 0], :kv_len][:, None, None]
    return table[None, None, input_pos, :kv_len]


def run_layers(
    layers,
    x: Tensor,
    freqs_cis: Tensor,
    mask: Tensor,
    input_pos: Tensor | None,
    kv_len: int | None = None,
) -> Tensor:
    for layer in layers:
        h = attention(layer.attention, layer.attention_norm(x), freqs_cis, mask, input_pos, kv_len)
        x = x + h
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return x


def slow_hidden(
    model: DualARTransformer,
    inp: Tensor,
    input_pos: Tensor,
    kv_len: int,
) -> Tensor:
    """Slow transformer over ``inp`` at ``input_pos``, attending over the cache's first
    ``kv_len`` positions (which must cover ``input_pos``); the last position's pre-norm hidden
    state, the only one sampling needs. Per-row positions [B, 1] decode B requests at once."""
    x = embed(model, inp)
    mask = causal_mask(model.causal_mask, input_pos, kv_len)
    x = run_layers(model.layers, x, model.freqs_cis[input_pos], mask, input_pos, kv_len)
    return x[:, -1:]


def slow_hidden_uncached(model: DualARTransformer, inp: Tensor) -> Tensor:
    """Slow transformer over a whole sequence without touching the KV cache (teacher forcing)."""
    x = embed(model, inp)
    seq = x.shape[1]
    mask = model.causal_mask[None, None, :seq, :seq]
    return run_layers(model.layers, x, model.freqs_cis[:seq], mask, None)


def fast_step(model: DualARTransformer, x: Tensor, pos: Tensor) -> Tensor:
    """One fast-transformer position with its KV cache; returns the normed hidden state.
    ``pos`` [1] is one request's position, [B, 1] one per row of the slot caches."""
    n = model.config.num_codebooks
    mask = causal_mask(model.causal_mask, pos, n)
    x = run_layers(
        model.fast_layers, x.view(x.shape[0], 1, -1), model.fast_freqs_cis[pos], mask, pos, n
    )
    return model.fast_norm(x)


def fast_uncached(model: DualARTransformer, x: Tensor) -> Tensor:
    """Fast transformer over whole frames [frames, num_codebooks, dim] (teacher forcing)."""
    n = x.shape[1]
    mask = model.causal_mask[None, None, :n, :n]
    return model.fast_norm(run_layers(model.fast_layers, x, model.fast_freqs_cis[:n], mask, None))
