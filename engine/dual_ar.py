"""Forward passes over the upstream DualARTransformer's own modules, shaped for decoding.

Upstream's ``forward_generate`` computes logits over all 155,776 tokens every frame and expands
the grouped KV cache with ``repeat_interleave`` in every layer. These functions run the same
modules and weights but return hidden states (the caller applies a sliced head) and use SDPA's
native grouped-query attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import Attention, DualARTransformer, apply_rotary_emb
from torch import Tensor


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


def attention(
    attn: Attention, x: Tensor, freqs_cis: Tensor, mask: Tensor, input_pos: Tensor | None
) -> Tensor:
    """Upstream ``Attention`` with its KV cache when ``input_pos`` is given, causal otherwise."""
    bsz, seqlen, _ = x.shape
    q_size = attn.n_head * attn.head_dim
    kv_size = attn.n_local_heads * attn.head_dim
    q, k, v = attn.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(bsz, seqlen, attn.n_head, attn.head_dim)
    k = k.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    v = v.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    if attn.attention_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = apply_rotary_emb(q, freqs_cis).transpose(1, 2)
    k = apply_rotary_emb(k, freqs_cis).transpose(1, 2)
    v = v.transpose(1, 2)
    if input_pos is not None:
        k, v = attn.kv_cache.update(input_pos, k, v)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, enable_gqa=attn.n_head != attn.n_local_heads
    )
    return attn.wo(y.transpose(1, 2).reshape(bsz, seqlen, q_size))


def run_layers(
    layers, x: Tensor, freqs_cis: Tensor, mask: Tensor, input_pos: Tensor | None
) -> Tensor:
    for layer in layers:
        x = x + attention(layer.attention, layer.attention_norm(x), freqs_cis, mask, input_pos)
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return x


def slow_hidden(
    model: DualARTransformer, inp: Tensor, input_pos: Tensor, *, last_only: bool = True
) -> Tensor:
    """Slow transformer over ``inp`` at ``input_pos`` using the KV cache; pre-norm hidden states."""
    x = embed(model, inp)
    mask = model.causal_mask[None, None, input_pos, : model.max_seq_len]
    x = run_layers(model.layers, x, model.freqs_cis[input_pos], mask, input_pos)
    return x[:, -1:] if last_only else x


def slow_hidden_uncached(model: DualARTransformer, inp: Tensor) -> Tensor:
    """Slow transformer over a whole sequence without touching the KV cache (teacher forcing)."""
    x = embed(model, inp)
    seq = x.shape[1]
    mask = model.causal_mask[None, None, :seq, :seq]
    return run_layers(model.layers, x, model.freqs_cis[:seq], mask, None)


def fast_step(model: DualARTransformer, x: Tensor, pos: Tensor) -> Tensor:
    """One fast-transformer position with its KV cache; returns the normed hidden state."""
    mask = model.causal_mask[None, None, pos, : model.config.num_codebooks]
    x = run_layers(
        model.fast_layers, x.view(x.shape[0], 1, -1), model.fast_freqs_cis[pos], mask, pos
    )
    return model.fast_norm(x)


def fast_uncached(model: DualARTransformer, x: Tensor) -> Tensor:
    """Fast transformer over whole frames [frames, num_codebooks, dim] (teacher forcing)."""
    n = x.shape[1]
    mask = model.causal_mask[None, None, :n, :n]
    return model.fast_norm(run_layers(model.fast_layers, x, model.fast_freqs_cis[:n], mask, None))
