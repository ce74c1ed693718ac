"""Streamed codec decoding that carries every causal layer's state from one chunk to the next.

The decoder is causal: each convolution looks back a few samples, the transformer after the
quantizer looks back up to its attention window (128 frames in S1-mini). Decoding a chunk with a
fixed left context recomputes that context for every chunk (32 frames of context for 16 new
ones: three times the work) and still differs from one-shot decoding, because the context is
shorter than what the transformer sees. Carrying state instead decodes each frame once and gives
one-shot decoding's audio: each convolution keeps the last input samples it needs (its causal
padding), the transformer keeps its keys and values for the last ``window - 1`` positions and
the position count, so its rotary phases and attention window are one-shot's.

A stream's state lives in a ``CodecStream`` that is made current (a context variable, so
threads decoding different requests never see each other's) for the duration of one chunk; the
layers read and update it. With no current stream the same layers decode a whole signal as
before.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from fish_speech.models.dac.modded_dac import Transformer, WindowLimitedTransformer
from torch import nn

_CURRENT: contextvars.ContextVar[CodecStream | None] = contextvars.ContextVar(
    "codec_stream", default=None
)


class CodecStream:
    """One request's streamed decode: per-layer carried state, keyed by the layer."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._decode = decode
        self.state: dict[nn.Module, Any] = {}
        self.frames = 0

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio for the next ``codes`` [C, n] of this stream: the samples one-shot decoding of
        everything so far would give for these frames."""
        token = _CURRENT.set(self)
        try:
            audio = self._decode(codes)
        finally:
            _CURRENT.reset(token)
        self.frames += codes.shape[-1]
        return audio


def time_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, L] with its memory laid out as [B, L, C] (a no-op when it already is)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def current_stream() -> CodecStream | None:
    return _CURRENT.get()


def carried(layer: nn.Module, x: torch.Tensor, left: int) -> torch.Tensor:
    """``x`` [B, C, 1, L] (channels-last) with ``left`` samples in front: zeros at the start of
    a signal (causal padding), the previous chunk's last input samples within a stream."""
    if left == 0:
        return x
    stream = current_stream()
    previous = stream.state.get(layer) if stream is not None else None
    x = F.pad(x, (left, 0)) if previous is None else torch.cat([previous, x], dim=3)
    if stream is not None:
        stream.state[layer] = x[..., -left:].clone(memory_format=torch.channels_last)
    return x


class _WindowCache:
    """What upstream's ``Attention`` calls as its ``kv_cache``: the carried keys and values in
    front of this chunk's, and the last ``keep`` of them kept for the next chunk."""

    def __init__(self, previous: tuple[torch.Tensor, torch.Tensor] | None, keep: int) -> None:
        self.previous = previous
        self.keep = keep
        self.kept: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.previous is not None:
            k = torch.cat([self.previous[0], k], dim=2)
            v = torch.cat([self.previous[1], v], dim=2)
        self.kept = (k[:, :, -self.keep :], v[:, :, -self.keep :]) if self.keep else None
        return k, v


def window_mask(start: int, steps: int, cached: int, window: int | None) -> torch.Tensor:
    """[1, 1, steps, cached + steps]: position ``start + i`` attends to the cached positions and
    this chunk's up to itself, at most ``window`` back (upstream's window-limited causal mask)."""
    rows = torch.arange(start, start + steps).view(-1, 1)
    cols = torch.arange(start - cached, start + steps).view(1, -1)
    mask = cols <= rows
    if window is not None:
        mask &= cols > rows - window
    return mask[None, None]


class StreamingWindowTransformer(nn.Module):
    """Upstream's ``WindowLimitedTransformer`` given time-major input (so its linear layers run
    as plain GEMMs: see ``engine.codec_layout``) and, within a stream, carried keys and values."""

    def __init__(self, upstream: WindowLimitedTransformer, stateful: bool = False) -> None:
        super().__init__()
        self.inner = upstream
        self.stateful = stateful

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = time_major(x)
        stream = current_stream() if self.stateful else None
        if stream is None:
            return self.inner(x)
        return self._chunk(x, stream)

    def _chunk(self, x: torch.Tensor, stream: CodecStream) -> torch.Tensor:
        inner = self.inner
        start, caches = stream.state.get(self, (0, None))
        x = inner.look_ahead_conv(inner.input_proj(x.transpose(1, 2)))
        steps = x.shape[1]
        keep = (inner.window_size or inner.config.block_size) - 1
        attentions = [layer.attention for layer in inner.layers]
        windows = [
            _WindowCache(caches[i] if caches else None, keep) for i in range(len(attentions))
        ]
        cached = 0 if not caches else caches[0][0].shape[2]
        mask = window_mask(start, steps, cached, inner.window_size).to(x.device)
        positions = torch.arange(start, start + steps, device=x.device)
        for attention, window in zip(attentions, windows, strict=True):
            attention.kv_cache = window
        try:
            x = Transformer.forward(inner, x, positions, mask)
        finally:
            for attention in attentions:
                attention.kv_cache = None
        stream.state[self] = (start + steps, [w.kept for w in windows])
        return inner.output_proj(x).transpose(1, 2)
