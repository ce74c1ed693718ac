"""Grouped attention accepts every layout a CUDA SDPA kernel writes its output in.

A masked SDPA call never gets flash attention (``check_for_attn_mask`` in torch's sdp_utils), so
on CUDA it runs the memory-efficient kernel (sm80-sm89, and fp32 on every GPU: flash and cuDNN
take only fp16/bf16) or cuDNN (preferred on sm90+). No GPU runs here, so the kernels run on fake
CUDA tensors: their meta registrations (``torch/_meta_registrations.py``) give the output layout
the CUDA kernels write: the efficient kernel allocates [B, M, H, D] and returns it transposed to
[B, H, M, D]; cuDNN matches the query's layout. The call is routed to the kernel explicitly,
because torch's backend choice reads the device's properties, which need a driver.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import (
    Attention,
    DualARModelArgs,
    KVCache,
    precompute_freqs_cis,
)
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode

from engine import dual_ar
from engine.model.synthetic import S1_MINI_CONFIG

aten = torch.ops.aten
SDPA = F.scaled_dot_product_attention  # the CPU kernel, kept before tests route the call
SdpaKernel = Callable[..., Tensor]


def additive_bias(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """The boolean mask as the additive bias the fused CUDA kernels take (torch converts it so)."""
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -torch.inf)
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def efficient_kernel(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    bias = additive_bias(q, k, attn_mask)
    return aten._scaled_dot_product_efficient_attention(q, k, v, bias, False)[0]


def cudnn_kernel(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    return aten._scaled_dot_product_cudnn_attention(q, k, v, additive_bias(q, k, attn_mask), False)[
        0
    ]


def transposed_like_efficient(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    """Real CPU values in the efficient kernel's layout ([B, M, H, D] memory)."""
    out = SDPA(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


# (name, slow or fast stack, query length T, KV length attended)
STEPS = [
    ("decode", "slow", 1, 2048),
    ("prefill", "slow", 37, 256),
    ("fast step", "fast", 1, 10),
]


def stack_config(stack: str) -> DualARModelArgs:
    cfg = DualARModelArgs(**S1_MINI_CONFIG)
    if stack == "fast":
        cfg.n_head, cfg.n_local_heads = cfg.fast_n_head, cfg.fast_n_local_heads
        cfg.head_dim, cfg.dim = cfg.fast_head_dim, cfg.fast_dim
    return cfg


def run_attention(
    cfg: DualARModelArgs, t: int, kv_len: int, dtype: torch.dtype
) -> tuple[Attention, Tensor]:
    """One upstream ``Attention`` layer of ``cfg`` through ``dual_ar.attention`` at positions
    ``kv_len - t .. kv_len - 1`` of a cache of ``kv_len`` positions."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        attn = Attention(cfg)
    finally:
        torch.set_default_dtype(before)
    attn.kv_cache = KVCache(1, kv_len, cfg.n_local_heads, cfg.head_dim, dtype=dtype)
    freqs = precompute_freqs_cis(kv_len, cfg.head_dim, cfg.rope_base)
    causal = torch.tril(torch.ones(kv_len, kv_len, dtype=torch.bool))
    x = torch.randn(1, t, cfg.dim, dtype=dtype)
    pos = torch.arange(kv_len - t, kv_len)
    mask = causal[None, None, pos, :kv_len]
    return attn, dual_ar.attention(attn, x, freqs[pos], mask, pos, kv_len)


@pytest.mark.parametrize(("name", "stack", "t", "kv_len"), STEPS, ids=[s[0] for s in STEPS])
@pytest.mark.parametrize(
    ("kernel", "dtype"),
    [
        (efficient_kernel, torch.bfloat16),
        (efficient_kernel, torch.float16),
        (efficient_kernel, torch.float32),
        (cudnn_kernel, torch.bfloat16),
        (cudnn_kernel, torch.float16),
    ],
    ids=["efficient-bf16", "efficient-fp16", "efficient-fp32", "cudnn-bf16", "cudnn-fp16"],
)
def test_s1_mini_attention_takes_the_cuda_kernels_output_layout(
    monkeypatch: pytest.MonkeyPatch,
    kernel: SdpaKernel,
    dtype: torch.dtype,
    name: str,
    stack: str,
    t: int,
    kv_len: int,
) -> None:
    """Decode, prefill and the fast step of the real-size model, on fake CUDA tensors."""
    monkeypatch.setattr(dual_ar.F, "scaled_dot_product_attention", kernel)
    cfg = stack_config(stack)
    with FakeTensorMode(), torch.device("cuda"):
        _, y = run_attention(cfg, t, kv_len, dtype)
    assert y.device.type == "cuda" and y.dtype == dtype
    assert tuple(y.shape) == (1, t, cfg.dim)


def test_the_efficient_kernels_layout_is_transposed_so_a_view_cannot_regroup_it() -> None:
    """What made ``.view`` fail: the memory-efficient kernel's output for grouped queries."""
    with FakeTensorMode(), torch.device("cuda"):
        q = torch.empty(1, 8, 2, 128, dtype=torch.bfloat16)
        k = torch.empty(1, 8, 256, 128, dtype=torch.bfloat16)
        y = efficient_kernel(q, k, k, torch.ones(1, 1, 2, 256, dtype=torch.bool))
    assert y.stride() == (2 * 8 * 128, 128, 8 * 128, 1)
    assert not y.is_contiguous()


@pytest.mark.parametrize(("name", "stack", "t", "kv_len"), STEPS, ids=[s[0] for s in STEPS])
def test_a_transposed_kernel_output_gives_the_same_values(
    monkeypatch: pytest.MonkeyPatch, name: str, stack: str, t: int, kv_len: int
) -> None:
    """Real values on CPU: an output in the efficient kernel's layout is regrouped to exactly the
    result of the contiguous one (small dims of the same head grouping, fp32)."""
    cfg = stack_config(stack)
    cfg.dim, cfg.head_dim = 64, 8
    torch.manual_seed(0)
    _, expected = run_attention(cfg, t, kv_len, torch.float32)
    monkeypatch.setattr(dual_ar.F, "scaled_dot_product_attention", transposed_like_efficient)
    torch.manual_seed(0)
    _, got = run_attention(cfg, t, kv_len, torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cpu_decode_output_reaches_the_projection_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU flash writes [B, Hkv, groups, D] for one query position: already the [B, 1, H * D]
    the output projection reads, so regrouping it is a view of the kernel's own output."""
    written: list[Tensor] = []

    def recording_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
        written.append(SDPA(q, k, v, attn_mask=attn_mask))
        return written[-1]

    monkeypatch.setattr(dual_ar.F, "scaled_dot_product_attention", recording_sdpa)
    q, k = torch.randn(1, 16, 1, 64), torch.randn(1, 8, 32, 64)
    y = dual_ar.grouped_attention(q, k, k, torch.ones(1, 1, 1, 32, dtype=torch.bool))
    assert y.shape == (1, 1, 16 * 64)
    assert y.untyped_storage().data_ptr() == written[0].untyped_storage().data_ptr()
