"""The codec stage: reference audio -> VQ codes, and codes -> 44.1 kHz audio, whole or in chunks.

On CUDA the modules only encoding uses (the encoder, the quantizer's downsampling and
pre-transformer, the codebooks' input projections: 207 M parameters, 0.41 GB in bf16, plus
0.29 GB of buffers, mostly the encoder transformer's 16,384² causal mask) wait in pinned host
memory and are copied to the device for each encode; a voice's codes are cached, so that is once
per new reference.

The codec is causal, so decoding a chunk with enough frames of left context reproduces one-shot
decoding up to the reach of its attention; ``stream_max_difference`` measures how close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from fish_speech.models.dac.modded_dac import DAC
from torch import nn
from torch.nn.utils import parametrize

from engine.codec_layout import channels_last_decoder
from engine.codec_stream import CodecStream
from engine.profile import EngineProfile
from engine.sampling import MAX_NEW_TOKENS

log = logging.getLogger(__name__)


def fuse_weight_norm(codec: DAC) -> int:
    """Bake weight-norm parametrizations into plain weights (recomputed every call otherwise)."""
    fused = 0
    for module in codec.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            fused += 1
    return fused


def encode_only_modules(codec: DAC) -> list[nn.Module]:
    """The parts of the DAC that ``encode`` runs and ``decode`` never does."""
    quantizer = codec.quantizer
    projections = [
        vq.in_proj
        for rvq in (quantizer.semantic_quantizer, quantizer.quantizer)
        for vq in rvq.quantizers
    ]
    return [codec.encoder, quantizer.downsample, quantizer.pre_module, *projections]


def decode_lengths(profile: EngineProfile) -> tuple[int, ...]:
    """The frame counts the compiled codec decodes at: every decode is padded up to one of them.

    The compiled decoder is static: one graph per input length, all built by warm-up. A dynamic
    graph is no cheaper here, because every convolution guards on the size range its backend
    chooses (mkldnn on CPU, cuDNN on CUDA), so new lengths recompile inside requests anyway.
    The codec is causal, so codes padded on the right decode the real frames unchanged.

    Streamed windows (``codec_left_context + chunk_size`` frames at most) get the powers of two
    from ``first_chunk_size`` and that window itself (4, 8, 16, 32, 48 by default); whole-file
    decodes double from there up to a request's frame budget (``MAX_NEW_TOKENS``), or the largest
    warmed KV bucket if smaller. Padding costs at most 2x on a decode and nothing in steady
    streaming; longer decodes (a caller's larger budget) keep doubling, compiled when first met.
    Warm-up runs each length once, so the ladder stops at the budget: on a CPU, where the
    full-size codec decodes ~30 ms a frame, every doubling beyond it would add minutes to start-up.
    """
    window = profile.codec_left_context + profile.chunk_size
    lengths = {window}
    n = min(profile.first_chunk_size, window)
    while n < window:
        lengths.add(n)
        n *= 2
    top = max(profile.buckets_to_warm())
    n = window
    while n < min(MAX_NEW_TOKENS, top):
        n *= 2
        lengths.add(min(n, top))
    return tuple(sorted(lengths))


class CodecRunner:
    """Encode and decode with the upstream DAC under the profile's chunking and compile settings."""

    def __init__(self, codec: DAC, profile: EngineProfile) -> None:
        self.codec = codec
        self.profile = profile
        fuse_weight_norm(codec)
        if profile.codec_layout == "channels_last":
            channels_last_decoder(codec, stateful=profile.codec_streaming == "stateful")
        # Upstream computes these with numpy: dynamo guards a numpy scalar as a tensor, and that
        # guard fails at once under inference_mode (a compiled decode crashed on its first call).
        codec.hop_length = int(codec.hop_length)
        codec.frame_length = int(codec.frame_length)
        self.device = next(codec.parameters()).device
        self.dtype = next(codec.parameters()).dtype
        self.samples_per_frame = codec.frame_length
        self.sample_rate = int(codec.sample_rate)
        self.semantic_size = int(codec.quantizer.semantic_quantizer.codebook_size)
        self.residual_size = int(codec.quantizer.quantizer.codebook_size)
        self.num_codebooks = sum(
            len(rvq.quantizers)
            for rvq in (codec.quantizer.semantic_quantizer, codec.quantizer.quantizer)
        )
        self._decode = self._decode_eager
        self.lengths: tuple[int, ...] = ()  # padded decode lengths; empty when eager
        if profile.compile_codec != "none":
            mode = None if profile.compile_codec == "default" else profile.compile_codec
            self.lengths = decode_lengths(profile)
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, len(self.lengths) + 8)
            self._decode = torch.compile(self._decode_eager, mode=mode, dynamic=False)
        self._pinned: torch.Tensor | None = None
        # (module, name, host copy) of every encode-only parameter and buffer, on CUDA only.
        self._parked: list[tuple[nn.Module, str, torch.Tensor]] = []
        if self.device.type == "cuda":
            self._park_encoder(codec)

    def _park_encoder(self, codec: DAC) -> None:
        """Keep a host copy (pinned where a driver is present) of the encode-only tensors and
        put it in place of the device one, which is freed."""
        pin = torch.cuda.is_available()
        for module in encode_only_modules(codec):
            for sub in module.modules():
                tensors = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
                for name, tensor in tensors:
                    host = tensor.detach().to("cpu")
                    self._parked.append((sub, name, host.pin_memory() if pin else host))
        self._install(lambda host: host)

    def _install(self, place: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for sub, name, host in self._parked:
            tensor = place(host)
            if isinstance(getattr(sub, name), nn.Parameter):
                tensor = nn.Parameter(tensor, requires_grad=False)
            setattr(sub, name, tensor)

    @contextmanager
    def _encoder_on_device(self) -> Iterator[None]:
        """The encode-only modules on the device for the duration: one host-to-device copy;
        after, the host copies are put back and the device ones freed."""
        if not self._parked:
            yield
            return
        self._install(lambda host: host.to(self.device, non_blocking=True))
        try:
            yield
        finally:
            self._install(lambda host: host)
            torch.cuda.empty_cache()

    def _to_device(self, audio: np.ndarray) -> torch.Tensor:
        """Copy host audio to the device through a reused pinned buffer."""
        host = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if self.device.type != "cuda":
            return host
        if self._pinned is None or self._pinned.numel() < host.numel():
            self._pinned = torch.empty(host.numel(), dtype=torch.float32).pin_memory()
        staged = self._pinned[: host.numel()]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Codes [num_codebooks, frames] (int64, CPU) for mono 44.1 kHz audio.

        Audio longer than ``encode_chunk_seconds`` is encoded in whole-frame chunks so peak
        memory stays bounded by the chunk, not the recording.
        """
        chunk = max(
            1, int(self.profile.encode_chunk_seconds * self.sample_rate) // self.samples_per_frame
        )
        chunk *= self.samples_per_frame
        pieces = []
        with self._encoder_on_device():
            for start in range(0, len(audio), chunk):
                wav = self._to_device(audio[start : start + chunk]).to(self.dtype)[None, None]
                codes, _ = self.codec.encode(wav)
                pieces.append(codes[0].long().cpu())
        return torch.cat(pieces, dim=1)

    def _decode_eager(self, codes: torch.Tensor) -> torch.Tensor:
        """``DAC.decode`` without the lengths it computes and nobody reads."""
        return self.codec.decoder(self.codec.quantizer.decode(codes[None]))[0, 0]

    def padded_length(self, frames: int) -> int:
        """The compiled decode length ``frames`` is padded to (itself when eager).

        Beyond the warmed lengths (a frame budget above ``MAX_NEW_TOKENS``) the ladder keeps
        doubling; each new length compiles once, in the request that first needs it, and says so.
        """
        if not self.lengths:
            return frames
        for length in self.lengths:
            if length >= frames:
                return length
        length = self.lengths[-1]
        while length < frames:
            length *= 2
        log.warning(
            "codec: %d frames exceed the warmed decode lengths (up to %d): compiling %d",
            frames,
            self.lengths[-1],
            length,
        )
        self.lengths = (*self.lengths, length)
        return length

    def _decode_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Device audio for device codes [C, n]: right-padded to a warmed length when compiled."""
        if not self.lengths:
            return self._decode(codes)
        frames = codes.shape[1]
        window = torch.nn.functional.pad(codes, (0, self.padded_length(frames) - frames))
        return self._decode(window)[: frames * self.samples_per_frame]  # padding copied: contiguous

    @torch.inference_mode()
    def warm(self) -> None:
        """Build the compiled decoder's graph for every padded length (nothing when eager)."""
        for length in self.lengths:
            self._decode(
                torch.zeros(self.num_codebooks, length, dtype=torch.long, device=self.device)
            )

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Audio (float32, 44.1 kHz) for codes [num_codebooks, frames]."""
        audio = self._decode_frames(codes.to(self.device))
        return audio.float().cpu().numpy()

    def open_stream(self) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """For one streamed request: a function giving device audio for frames [start, end) of
        its codes, called chunk after chunk in order. Stateful (``codec_streaming``): each frame
        decoded once, carrying the layers' state; else ``decode_window``."""
        if self.profile.codec_streaming != "stateful":
            return self.decode_window
        stream = CodecStream(self._decode_eager)

        @torch.inference_mode()
        def decode(codes: torch.Tensor, start: int, end: int) -> torch.Tensor:
            if start != stream.frames:
                raise ValueError(f"a codec stream at frame {stream.frames} was asked for {start}")
            return stream.decode(codes[:, start:end].to(self.device))

        return decode

    @torch.inference_mode()
    def decode_window(self, codes: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Device audio for frames [start, end) of ``codes``, decoded with left context."""
        left = max(0, start - self.profile.codec_left_context)
        audio = self._decode_frames(codes[:, left:end].to(self.device))
        return audio[(start - left) * self.samples_per_frame :]
