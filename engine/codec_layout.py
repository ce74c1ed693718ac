"""The codec decoder's convolutions on channels-last memory, where oneDNN's fast kernels are.

Upstream runs every convolution as ``Conv1d`` on [B, C, L] memory and ends each with
``.contiguous()``. On a CPU, oneDNN computes a 1-D convolution in a blocked layout and reorders
its input and output around it; in bf16 the reorders and the non-AMX kernel cost more than the
arithmetic. The same convolution as a 2-D one over [B, C, 1, L] in channels-last memory runs on
AMX without reorders: measured on this project's 2-core Xeon, bf16, 192 channels x 49,152
samples, kernel 7: 60.0 ms as ``Conv1d``, 11.4 ms as channels-last ``conv2d`` (2.2 TFLOP/s).

So the decode-path convolutions are swapped for modules that do exactly what upstream's
``CausalConvNet`` / ``CausalTransConvNet`` do (causal left padding, the same weights) on
channels-last memory, and hand back [B, C, L] views whose memory is [B, L, C]. Elementwise ops
(Snake, the residual adds) keep that layout, ConvNeXt's ``permute`` turns it into contiguous
[B, L, C] for its linear layers, and the transformers get their input in the same layout (a
``[B, L, C]``-contiguous tensor after their own ``transpose``), so their linear layers run as
plain GEMMs instead of batched ones that copy the weight on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dac.nn.layers import Snake1d
from fish_speech.models.dac import rvq
from fish_speech.models.dac.modded_dac import (
    DAC,
    CausalConvNet,
    CausalTransConvNet,
    WindowLimitedTransformer,
    get_extra_padding_for_conv1d,
)
from torch import nn

from engine.codec_stream import StreamingWindowTransformer, carried, current_stream

# The quantizer's module (rvq) defines its own copies of the two causal convolution classes.
CAUSAL_CONVS = (CausalConvNet, rvq.CausalConvNet)
CAUSAL_TRANS_CONVS = (CausalTransConvNet, rvq.CausalTransConvNet)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _weight_2d(weight: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(
        weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last),
        requires_grad=False,
    )


class ChannelsLastCausalConv(nn.Module):
    """Upstream's ``CausalConvNet`` (left padding, extra right padding to whole strides) as a
    channels-last 2-D convolution."""

    def __init__(self, upstream: CausalConvNet, stateful: bool = False) -> None:
        super().__init__()
        self.stateful = stateful
        conv = upstream.conv
        self.weight = _weight_2d(conv.weight)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), False)
        self.stride = int(conv.stride[0])
        self.dilation = int(conv.dilation[0])
        self.groups = int(conv.groups)
        self.kernel_size = int(upstream.kernel_size)  # dilated extent
        self.padding = int(upstream.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        x = _as_2d(x)
        if self.stateful and self.stride == 1 and current_stream() is not None:
            x = carried(self, x, self.padding)
            y = F.conv2d(x, self.weight, self.bias, 1, 0, (1, self.dilation), self.groups)
            return y.squeeze(2)
        if self.stride == 1:
            # The convolution's own (two-sided) padding, then the outputs past the input's
            # length dropped: the same values as padding on the left only, without F.pad's copy.
            y = F.conv2d(
                x, self.weight, self.bias, 1, (0, self.padding), (1, self.dilation), self.groups
            )
            return y.squeeze(2)[..., :length]
        extra = get_extra_padding_for_conv1d(x, self.kernel_size, self.stride, self.padding)
        y = F.conv2d(
            F.pad(x, (self.padding, extra)),
            self.weight,
            self.bias,
            (1, self.stride),
            0,
            (1, self.dilation),
            self.groups,
        )
        return y.squeeze(2)


class ChannelsLastCausalTransConv(nn.Module):
    """Upstream's ``CausalTransConvNet`` with kernel ``m * stride`` (the last ``kernel - stride``
    samples dropped) as an ordinary causal convolution of ``m`` taps whose output channels are
    the ``stride`` phases of each input step.

    Output sample ``t * s + r`` of a transposed convolution with stride ``s`` and kernel
    ``m * s`` is the sum over taps ``j < m`` of input ``t - j`` times kernel column ``r + j * s``.
    So one convolution with ``s * C_out`` output channels, ordered (phase, channel), computes
    every phase; in channels-last memory its [B, T, s * C_out] output already is the
    [B, T * s, C_out] signal. oneDNN has no fast bf16 transposed convolution on this CPU
    (87.7 ms for 384 -> 192 channels, stride 4, 48 frames); this runs on its AMX convolution.
    """

    def __init__(self, upstream: CausalTransConvNet, stateful: bool = False) -> None:
        super().__init__()
        self.stateful = stateful
        conv = upstream.conv
        weight = conv.weight.detach()  # [C_in, C_out, m * s]
        c_in, c_out, kernel = weight.shape
        self.stride = int(conv.stride[0])
        self.taps = kernel // self.stride
        self.out_channels = c_out
        # taps[j][(r, o), i] = weight[i, o, r + j * s]; convolution tap k reads input t - (m-1-k).
        phases = weight.reshape(c_in, c_out, self.taps, self.stride).permute(2, 3, 1, 0)
        folded = phases.flip(0).reshape(self.taps, self.stride * c_out, c_in).permute(1, 2, 0)
        self.weight = _weight_2d(folded)
        self.bias = (
            None
            if conv.bias is None
            else nn.Parameter(conv.bias.detach().repeat(self.stride), requires_grad=False)
        )

    @staticmethod
    def supports(upstream: CausalTransConvNet) -> bool:
        conv = upstream.conv
        return (
            conv.dilation[0] == 1
            and conv.groups == 1
            and conv.padding[0] == 0
            and conv.output_padding[0] == 0
            and conv.kernel_size[0] % conv.stride[0] == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, steps = x.shape
        pad = self.taps - 1
        if self.stateful and current_stream() is not None:
            y = F.conv2d(carried(self, _as_2d(x), pad), self.weight, self.bias)
        else:
            y = F.conv2d(_as_2d(x), self.weight, self.bias, 1, (0, pad))[..., :steps]
        y = y.squeeze(2).transpose(1, 2)  # [B, T, s * C_out], contiguous rows
        y = y.reshape(batch, steps * self.stride, self.out_channels)
        return y.transpose(1, 2)


class Snake(nn.Module):
    """Upstream's Snake activation, ``x + sin(alpha * x)**2 / (alpha + 1e-9)``, in eager ops
    that keep their input's memory layout.

    Upstream's is a TorchScript function whose output keeps the time-major order but gets a
    batch stride of C instead of L * C; PyTorch's memory-format heuristic then does not read it
    as channels-last, and oneDNN reorders the input of every convolution after it (full-size
    bf16 decode: 30.9 ms a frame with upstream's Snake, 11.7 ms with this one). The reciprocal
    is computed once here.
    """

    def __init__(self, upstream: Snake1d) -> None:
        super().__init__()
        alpha = upstream.alpha.detach()
        self.alpha = nn.Parameter(alpha, requires_grad=False)
        self.inverse = nn.Parameter((alpha + 1e-9).reciprocal(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sin(self.alpha * x)
        return self.inverse * y.square_() + x


def channels_last_decoder(codec: DAC, stateful: bool = False) -> int:
    """Swap every convolution that decoding runs for its channels-last twin and give the
    decode-path transformers time-major input; return how many convolutions were swapped.

    ``stateful``: the layers carry their state within a current ``CodecStream``
    (``engine.codec_stream``); without it they never look for one, which is what a compiled
    codec needs (Dynamo cannot trace the context variable). Run after weight norm is folded
    (the twins copy plain weights). The encode path is left as upstream has it.
    """
    swapped = 0
    for root in (codec.quantizer.upsample, codec.decoder):
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Snake1d):
                    setattr(parent, name, Snake(child))
                elif isinstance(child, CAUSAL_CONVS):
                    setattr(parent, name, ChannelsLastCausalConv(child, stateful))
                    swapped += 1
                elif isinstance(child, CAUSAL_TRANS_CONVS) and (
                    ChannelsLastCausalTransConv.supports(child)
                ):
                    setattr(parent, name, ChannelsLastCausalTransConv(child, stateful))
                    swapped += 1
    for parent in (codec.quantizer, *codec.decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WindowLimitedTransformer) and child.channels_first:
                if parent is codec.quantizer and name != "post_module":
                    continue  # the encoder's pre_module
                setattr(parent, name, StreamingWindowTransformer(child, stateful))
    return swapped
