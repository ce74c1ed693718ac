"""The rows a bench compares, on a GPU and on a CPU, and the fixed inputs every row gets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.audio_io import SAMPLE_RATE

TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."
)
REFERENCE_TEXT = "This is the reference recording of the speaker."
PROBE_BYTES = 2**30


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "upstream" or "engine"
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # set in the row's processes only

    @property
    def compiled(self) -> bool:
        if self.kind == "upstream":
            return bool(self.options.get("compile"))
        return any(
            self.options.get(k, "none") != "none" for k in ("compile_decode", "compile_codec")
        ) or bool(self.options.get("compile_prefill"))


_GPU_COMPILED = {
    "compile_decode": "reduce-overhead",
    "compile_codec": "default",
    "compile_prefill": True,
    "num_streams": 2,
}
GPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("upstream-compile", "upstream", {"compile": True}),
    Row("ours-bf16-compiled", "engine", {"precision": "bf16", **_GPU_COMPILED}),
    Row("ours-int8", "engine", {"precision": "bf16", "quantization": "int8", **_GPU_COMPILED}),
    Row("ours-int4", "engine", {"precision": "bf16", "quantization": "int4", **_GPU_COMPILED}),
    # What an RTX 30/40 card runs: cuDNN attention is chosen only on sm90+, so sm86/89 get the
    # memory-efficient kernel. Deprioritising cuDNN shows that path on an H100/H200.
    Row(
        "ours-bf16-mem-efficient",
        "engine",
        {"precision": "bf16", **_GPU_COMPILED},
        {"TORCH_CUDNN_SDPA_DEPRIORITIZED": "1"},
    ),
    Row(
        "ours-nf4 (experimental)",
        "engine",
        {"precision": "bf16", "quantization": "nf4", **_GPU_COMPILED, "fullgraph": False},
    ),
]
_CPU_COMPILED = {"compile_decode": "default"}
CPU_ROWS = [
    Row("upstream-eager", "upstream", {"compile": False}),
    Row("ours-fp32", "engine", {"precision": "fp32"}),
    Row("ours-bf16-compiled", "engine", {"precision": "bf16", **_CPU_COMPILED}),
    Row(
        "ours-int8-compiled",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED},
    ),
    Row(
        "ours-int4-compiled",
        "engine",
        {"precision": "bf16", "quantization": "int4", **_CPU_COMPILED},
    ),
    # The int8 row on torch's own int8 kernel (aten's _weight_int8pack_mm) and on the VNNI loop
    # for every row count: what ``ours-int8-compiled`` (auto: prefills on AMX tiles where the CPU
    # has them, the VNNI loop on AVX-512 VNNI CPUs) is measured against.
    Row(
        "ours-int8-compiled-stock-int8",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED, "int8_kernel": "stock"},
    ),
    Row(
        "ours-int8-compiled-vnni-prefill",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED, "int8_kernel": "vnni"},
    ),
    # The int8 row streaming a first chunk of 2 frames instead of 4: first audio against
    # ``ours-int8-compiled``, the rest of the stream in chunks of 16 as there.
    Row(
        "ours-int8-compiled-first-chunk-2",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED, "first_chunk_size": 2},
    ),
    # The int8 row with each chunk decoded to audio on a thread of its own (one core) while the
    # next frames are generated, against ``ours-int8-compiled``, which takes turns on both cores.
    Row(
        "ours-int8-compiled-codec-thread",
        "engine",
        {"precision": "bf16", "quantization": "int8", **_CPU_COMPILED, "codec_thread": True},
    ),
    # The int8 row with the codec as upstream lays it out, chunks decoded with left context:
    # what the channels-last layout and stateful streaming are measured against.
    Row(
        "ours-int8-compiled-upstream-codec",
        "engine",
        {
            "precision": "bf16",
            "quantization": "int8",
            **_CPU_COMPILED,
            "codec_layout": "upstream",
            "codec_streaming": "context",
        },
    ),
]


def reference_signal(seconds: float = 10.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic 10 s speech-like signal; with random weights only its length matters."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
    noise = np.random.default_rng(0).normal(0, 0.02, t.shape)
    return (0.2 * envelope * voice + noise).astype(np.float32)


def probe_bandwidth_gbs(device: str, nbytes: int = PROBE_BYTES, repeats: int = 5) -> float:
    """Best-of-``repeats`` read bandwidth of summing a ``nbytes`` tensor: the practical ceiling."""
    dev = torch.device(device)
    data = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    data.sum()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        data.sum()
        sync()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9
