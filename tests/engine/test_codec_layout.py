"""The codec decoder on channels-last memory computes what upstream's computes.

Every swapped module is checked against the upstream module it replaces (fp32, random weights,
odd lengths), and the whole decode path against upstream's decode: exact to float rounding in
fp32, and above the fidelity gate's 20 dB in bf16. The speed comes from each convolution getting
its input already in channels-last memory; that is checked too, at every convolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from dac.nn.layers import Snake1d
from fish_speech.models.dac.modded_dac import CausalConvNet, CausalTransConvNet

from engine.codec import fuse_weight_norm
from engine.codec_layout import (
    ChannelsLastCausalConv,
    ChannelsLastCausalTransConv,
    Snake,
    channels_last_decoder,
)
from engine.codec_stream import time_major
from engine.measure.fidelity import FIDELITY_GATES
from engine.model.checkpoint import CheckpointFolder
from engine.model.upstream import load_codec
from engine.profile import EngineProfile, Hardware, resolve_profile

pytestmark = pytest.mark.unit


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        p.data.normal_(0, 0.3)
    return module.eval()


def _is_time_major(x: torch.Tensor) -> bool:
    """[B, C, L] laid out as [B, L, C] (a single sample has no layout to keep)."""
    return x.shape[-1] == 1 or x.transpose(1, 2).is_contiguous()


def _computes_what_upstream_does(
    twin: torch.nn.Module, upstream: torch.nn.Module, length: int
) -> None:
    """The same output for the same input, and in time-major memory."""
    x = torch.randn(1, upstream.conv.in_channels, length)
    with torch.inference_mode():
        expected, got = upstream(x), twin(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert _is_time_major(got)


CONVS = {
    "kernel 7, dilation 3": lambda: CausalConvNet(6, 10, 7, dilation=3),
    "kernel 1": lambda: CausalConvNet(10, 10, 1),
    "depthwise": lambda: CausalConvNet(8, 8, 7, groups=8),
    "stride 2 (padded to whole strides)": lambda: CausalConvNet(6, 8, 4, stride=2),
}
TRANS_CONVS = {
    "kernel 16, stride 8": lambda: CausalTransConvNet(12, 6, 16, stride=8),
    "kernel 2, stride 2": lambda: CausalTransConvNet(8, 8, 2, stride=2),
    "kernel 12, stride 4": lambda: CausalTransConvNet(8, 6, 12, stride=4),
}


@pytest.mark.parametrize("make", CONVS.values(), ids=CONVS.keys())
@pytest.mark.parametrize("length", [1, 5, 37])
def test_a_channels_last_convolution_is_upstreams_causal_convolution(make, length: int) -> None:
    upstream = _randomised(make())
    _computes_what_upstream_does(ChannelsLastCausalConv(upstream), upstream, length)


@pytest.mark.parametrize("make", TRANS_CONVS.values(), ids=TRANS_CONVS.keys())
@pytest.mark.parametrize("length", [1, 5, 37])
def test_a_phase_folded_convolution_is_upstreams_transposed_convolution(make, length: int) -> None:
    """Kernel ``m * stride`` transposed convolutions become ``m``-tap convolutions whose output
    channels are the stride's phases; the result is the same signal, samples in order."""
    upstream = _randomised(make())
    assert ChannelsLastCausalTransConv.supports(upstream)
    _computes_what_upstream_does(ChannelsLastCausalTransConv(upstream), upstream, length)


def test_transposed_convolutions_whose_kernel_is_no_whole_number_of_strides_stay_upstreams() -> (
    None
):
    assert not ChannelsLastCausalTransConv.supports(CausalTransConvNet(4, 4, 5, stride=2))


def test_snake_is_upstreams_and_keeps_time_major_memory() -> None:
    upstream = _randomised(Snake1d(6))
    x = time_major(torch.randn(1, 6, 50))
    with torch.inference_mode():
        for _ in range(3):  # upstream's TorchScript function is re-optimised on later calls
            expected = upstream(x)
        got = Snake(upstream)(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert _is_time_major(got)


@pytest.fixture(scope="module")
def tiny_codecs(tiny_checkpoint: Path) -> dict[str, torch.nn.Module]:
    folder = CheckpointFolder(tiny_checkpoint)
    codecs = {}
    for name, dtype, layout in (
        ("upstream", torch.float32, False),
        ("fp32", torch.float32, True),
        ("bf16", torch.bfloat16, True),
    ):
        codec = load_codec(folder, torch.device("cpu"), dtype)
        fuse_weight_norm(codec)
        if layout:
            assert channels_last_decoder(codec) > 0
        codecs[name] = codec
    return codecs


def _decode(codec: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec.decoder(codec.quantizer.decode(codes[None]))[0, 0].float()


def _codes(codec: torch.nn.Module, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    quantizer = codec.quantizer
    size = quantizer.semantic_quantizer.codebook_size
    semantic = torch.randint(0, size, (1, frames), generator=g)
    rest = len(quantizer.quantizer.quantizers)
    residual = torch.randint(0, quantizer.quantizer.codebook_size, (rest, frames), generator=g)
    return torch.cat([semantic, residual])


def _snr_db(reference: torch.Tensor, audio: torch.Tensor) -> float:
    noise = (audio - reference).pow(2).sum().clamp_min(1e-30)
    return 10 * math.log10(reference.pow(2).sum() / noise)


def test_the_tiny_codec_decodes_as_upstream_on_channels_last_memory(
    tiny_codecs: dict[str, torch.nn.Module],
) -> None:
    codes = _codes(tiny_codecs["upstream"], 24)
    reference = _decode(tiny_codecs["upstream"], codes)
    torch.testing.assert_close(_decode(tiny_codecs["fp32"], codes), reference, rtol=1e-4, atol=1e-5)
    assert (
        _snr_db(reference, _decode(tiny_codecs["bf16"], codes))
        >= FIDELITY_GATES["codec_snr_db_min"]
    )


def _is_channels_last(x: torch.Tensor) -> bool:
    """Exactly the strides of a [B, L, C]-contiguous tensor, batch stride included: the memory
    format heuristic that picks oneDNN's layout reads every stride (upstream's TorchScript Snake
    returns a batch stride of C, and each convolution after it reordered its input)."""
    _, channels, length = x.shape
    return x.stride() == (channels * length, 1, channels)


def test_every_convolution_gets_channels_last_input_without_a_copy(
    tiny_codecs: dict[str, torch.nn.Module],
) -> None:
    """A convolution whose input is not channels-last pays a transposing copy of its whole
    input: that copy, around every convolution, was most of upstream's bf16 decode on a CPU."""
    codec = tiny_codecs["bf16"]
    seen: list[tuple[str, bool]] = []
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: seen.append((name, _is_channels_last(args[0])))
        )
        for name, module in codec.named_modules()
        if isinstance(module, (ChannelsLastCausalConv, ChannelsLastCausalTransConv))
    ]
    try:
        for _ in range(3):  # layouts must hold on later calls too
            _decode(codec, _codes(codec, 12))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen
    assert [name for name, ok in seen if not ok] == []


def test_a_cpu_profile_decodes_channels_last_and_a_cuda_one_as_upstream() -> None:
    cpu = Hardware("cpu", "cpu", None, False)
    cuda = Hardware("cuda", "NVIDIA GeForce RTX 4060", (8, 9), False)
    assert resolve_profile(EngineProfile(), cpu)[0].codec_layout == "channels_last"
    assert resolve_profile(EngineProfile(), cuda)[0].codec_layout == "upstream"
    chosen = EngineProfile(codec_layout="channels_last")
    assert resolve_profile(chosen, cuda)[0].codec_layout == "channels_last"
