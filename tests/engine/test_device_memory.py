"""What the engine keeps in device memory, and the CUDA settings that cost requests time.

The full output heads go once the sliced ones exist, the codec's encode-only modules wait on the
host between encodes (on CUDA, checked on fake CUDA tensors), and the perf model's resident bytes
are exactly the bytes of the tensors the engine holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fish_speech.models.text2semantic.llama import DualARModelArgs
from hydra.utils import instantiate
from torch._subclasses.fake_tensor import FakeTensorMode

from engine.codec import CodecRunner, encode_only_modules, fuse_weight_norm
from engine.engine import OptimizedFishSpeech, configure_cuda_math
from engine.measure import perf_model
from engine.model.checkpoint import load_codec_config
from engine.model.synthetic import S1_MINI_CONFIG
from engine.profile import EngineProfile

CPU = torch.device("cpu")


def test_the_full_output_heads_are_dropped_once_sliced(engine: OptimizedFishSpeech) -> None:
    model = engine.decoder.model
    assert not hasattr(model, "output") and not hasattr(model, "fast_output")
    cfg = model.config
    assert engine.decoder.slow_head.shape == (engine.decoder.semantic_size + 1, cfg.dim)


def test_resident_bytes_model_is_exactly_the_engines_tensors(
    engine: OptimizedFishSpeech, tiny_checkpoint: Path
) -> None:
    """Weights in their scheme, the KV caches, tables and the codec: to the byte, for the fp32
    engine and a bf16 int8 one."""
    assert engine.resident_bytes().total == engine.device_bytes()
    int8 = OptimizedFishSpeech.from_checkpoint(
        tiny_checkpoint, EngineProfile(precision="bf16", quantization="int8")
    )
    assert int8.resident_bytes().total == int8.device_bytes()
    assert int8.resident_bytes().weights < engine.resident_bytes().weights / 2


def test_s1_mini_resident_weights_leave_out_the_full_head() -> None:
    """Full size (bf16): 1.40 GB of DualAR weights where the loaded model has 1.72 GB (860 M
    parameters); the full heads (0.33 GB) are the difference, less the 10 MB sliced copies."""
    cfg = DualARModelArgs(**S1_MINI_CONFIG)
    profile = EngineProfile(device="cuda", precision="bf16")
    parts = perf_model.resident(cfg, profile, 4096, 4096, 1024, codec_bytes=0)
    loaded = 2 * (860_000_000)  # FACTS: 860 M parameters
    full_heads = 2 * (cfg.vocab_size * cfg.dim + cfg.codebook_size * cfg.fast_dim)
    assert full_heads > 0.31e9
    assert abs(parts.weights - (loaded - full_heads)) < 0.01 * loaded
    assert parts.kv_cache == 2 * 28 * 2 * 8 * 128 * 4096 + 2 * 4 * 2 * 8 * 64 * 10


def devices(modules) -> set[str]:
    return {t.device.type for m in modules for t in [*m.parameters(), *m.buffers()]}


def test_cuda_codec_keeps_its_encode_only_modules_on_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On fake CUDA tensors (the tiny codec): after set-up the encode-only modules are on the
    host and everything else on the device; during an encode they are on the device."""
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)  # no driver to hand memory to
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cuda"):
        codec = instantiate(load_codec_config("tiny"))
        fuse_weight_norm(codec)  # as the runner does first, so the bytes compare like for like
        on_device = perf_model.module_bytes(codec, torch.device("cuda"))
        runner = CodecRunner(codec, EngineProfile())
        encode_only = encode_only_modules(codec)
        assert devices(encode_only) == {"cpu"}
        decoding = [codec.decoder, codec.quantizer.post_module, codec.quantizer.upsample]
        assert devices(decoding) == {"cuda"}
        host = sum(perf_model.module_bytes(m, CPU) for m in encode_only)
        assert perf_model.module_bytes(codec, torch.device("cuda")) == on_device - host > 0
        with runner._encoder_on_device():
            assert devices(encode_only) == {"cuda"}
        assert devices(encode_only) == {"cpu"}


def test_cuda_setup_leaves_cudnn_autotuning_off() -> None:
    """The codec's inputs change length with every request: cuDNN's autotuner would re-tune
    every convolution for each new length."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        configure_cuda_math(EngineProfile(tf32=True))
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cudnn.benchmark = before
        torch.backends.cuda.matmul.allow_tf32 = False
