"""The optimization profile: every engine knob in one validated, YAML-serialisable object.

The harness writes it, the service loads it, the engine reads its knobs from it and nowhere else.
``resolve_profile`` turns a requested profile into the one that can actually run on this machine,
logging one line for each setting it had to change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp16", "fp32"]
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
Quantization = Literal["none", "int8", "int4", "nf4"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Provenance(BaseModel):
    """Where an exported profile came from, so loading it elsewhere can warn."""

    model_config = ConfigDict(extra="forbid")

    gpu_name: str | None = None
    compute_capability: str | None = None
    torch_version: str | None = None
    checkpoint_hash: str | None = None
    mlflow_run_id: str | None = None
    hardware: str | None = None
    created_at: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)


class EngineProfile(BaseModel):
    """All engine knobs. Defaults are the safe, uncompiled, unquantized engine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Precision = "auto"
    tf32: bool = True
    compile_decode: CompileMode = "none"
    compile_codec: CompileMode = "none"
    compile_prefill: bool = False
    fullgraph: bool = True
    quantization: Quantization = "none"
    int4_group_size: int = Field(64, ge=32, le=256)
    max_seq_len: int = Field(2048, ge=256, le=8192)
    chunk_size: int = Field(16, ge=1, le=1024, description="frames per streamed/decoded chunk")
    codec_left_context: int = Field(
        32, ge=0, le=1024, description="frames of left context per chunk"
    )
    encode_chunk_seconds: float = Field(
        30.0, gt=0, description="reference audio encoded in chunks this long"
    )
    num_streams: int = Field(1, ge=1, le=3)
    cache_limit: int = Field(64, ge=0)
    kv_cache: bool = True
    eos_check_interval: int = Field(
        8, ge=1, le=256, description="frames between end-of-speech checks"
    )
    provenance: Provenance | None = None

    @field_validator("kv_cache")
    @classmethod
    def _kv_cache_required(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "kv_cache=false is not supported: AR decoding without a KV cache is quadratic"
            )
        return value

    @property
    def compiled(self) -> bool:
        return self.compile_decode != "none" or self.compile_codec != "none" or self.compile_prefill

    def knobs(self) -> dict[str, Any]:
        """The flat knob dict (no provenance): MLflow params and config hashes use this."""
        return self.model_dump(exclude={"provenance"})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(
            yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    @classmethod
    def from_env(
        cls, base: EngineProfile | None = None, env: dict[str, str] | None = None
    ) -> EngineProfile:
        """Apply the ``.env.example`` overrides (MIXED_PRECISION, QUANTIZATION, ...) to ``base``."""
        env = dict(os.environ if env is None else env)
        data = (base or cls()).model_dump()
        for var, apply in _ENV_OVERRIDES.items():
            if env.get(var, "").strip():
                apply(data, env[var].strip())
        return cls.model_validate(data)


def _set(key: str, convert=str):
    def apply(data: dict[str, Any], raw: str) -> None:
        data[key] = convert(raw)

    return apply


def _quantization(data: dict[str, Any], raw: str) -> None:
    data["quantization"] = {"4bit": "nf4"}.get(raw.lower(), raw.lower())


def _enable_compile(data: dict[str, Any], raw: str) -> None:
    on = raw.lower() in {"1", "true", "yes", "on"}
    data["compile_decode"] = "reduce-overhead" if on else "none"
    data["compile_codec"] = "default" if on else "none"
    data["compile_prefill"] = on


_ENV_OVERRIDES = {
    "MIXED_PRECISION": _set("precision", str.lower),
    "QUANTIZATION": _quantization,
    "ENABLE_TORCH_COMPILE": _enable_compile,
    "MAX_SEQ_LEN": _set("max_seq_len", int),
    "CHUNK_SIZE": _set("chunk_size", int),
    "NUM_STREAMS": _set("num_streams", int),
    "CACHE_LIMIT": _set("cache_limit", int),
}


@dataclass(frozen=True)
class Hardware:
    """What this machine can run: the facts ``resolve_profile`` decides fallbacks on."""

    device: str
    name: str
    compute_capability: tuple[int, int] | None
    bitsandbytes_4bit: bool

    @classmethod
    def detect(cls, requested: str = "auto", probe_bitsandbytes: bool = False) -> Hardware:
        """This machine; bitsandbytes' 4-bit kernels are only probed when nf4 is asked for."""
        cuda = torch.cuda.is_available() and requested != "cpu"
        device = "cuda" if cuda else "cpu"
        nf4 = probe_bitsandbytes and _bitsandbytes_4bit_works(device)
        if not cuda:
            return cls("cpu", "cpu", None, nf4)
        return cls("cuda", torch.cuda.get_device_name(), torch.cuda.get_device_capability(), nf4)

    @property
    def capability_str(self) -> str | None:
        return None if self.compute_capability is None else "{}.{}".format(*self.compute_capability)


def _bitsandbytes_4bit_works(device: str) -> bool:
    try:
        import bitsandbytes as bnb

        weight = torch.randn(64, 64, device=device, dtype=torch.float16)
        packed, state = bnb.functional.quantize_4bit(weight, quant_type="nf4")
        bnb.functional.dequantize_4bit(packed, state)
        return True
    except Exception as exc:  # missing wheel, missing kernels, unsupported GPU
        log.info("bitsandbytes 4-bit kernels unavailable on %s: %s", device, exc)
        return False


def resolve_profile(requested: EngineProfile, hw: Hardware) -> tuple[EngineProfile, list[str]]:
    """The profile that will actually run on ``hw`` and one note per setting that changed."""
    data = requested.model_dump()
    notes: list[str] = []

    def change(key: str, value: Any, why: str) -> None:
        if data[key] != value:
            notes.append(f"{key}: {data[key]} -> {value} ({why})")
            data[key] = value

    if requested.device == "cuda" and hw.device != "cuda":
        notes.append("device: cuda -> cpu (CUDA is not available)")
    data["device"] = hw.device
    cuda = hw.device == "cuda"
    major = hw.compute_capability[0] if hw.compute_capability else 0
    if data["quantization"] == "nf4" and not hw.bitsandbytes_4bit:
        change("quantization", "int8", "bitsandbytes 4-bit kernels are not available")

    if not cuda:
        if data["precision"] == "auto":
            data["precision"] = "fp32"
        change("precision", "bf16" if data["precision"] == "bf16" else "fp32", "fp16 is GPU-only")
        data["tf32"] = False
        change("num_streams", 1, "CUDA streams need a CUDA device")
        dynamic_int8 = data["quantization"] == "int8" and data["precision"] == "fp32"
        why_eager = "torch.compile cannot trace CPU dynamic-int8 linear layers"
        for key in ("compile_decode", "compile_codec"):
            if dynamic_int8:
                change(key, "none", why_eager)
            elif data[key] in ("reduce-overhead", "max-autotune"):
                change(key, "default", f"{data[key]} relies on CUDA graphs / Triton autotuning")
        if dynamic_int8:
            change("compile_prefill", False, why_eager)
    else:
        if data["precision"] == "auto":
            data["precision"] = "bf16" if major >= 8 else "fp16"
        elif data["precision"] == "bf16" and major < 8:
            change(
                "precision",
                "fp16",
                f"bf16 needs compute capability 8.0, this GPU has {hw.capability_str}",
            )
        if data["tf32"] and major < 8:
            change(
                "tf32",
                False,
                f"TF32 needs compute capability 8.0, this GPU has {hw.capability_str}",
            )
        if data["quantization"] == "int4" and data["precision"] != "bf16":
            change("quantization", "int8", "int4 (tinygemm) kernels need bf16 weights")

    for note in notes:
        log.warning("profile fallback: %s", note)
    return EngineProfile.model_validate(data), notes


def torch_dtype(profile: EngineProfile) -> torch.dtype:
    """The float dtype of a *resolved* profile."""
    if profile.precision == "auto":
        raise ValueError("resolve the profile before asking for its dtype")
    return DTYPES[profile.precision]
