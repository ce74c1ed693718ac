"""The optimization profile: every engine knob in one validated, YAML-serialisable object.

The harness writes it, the service loads it, the engine reads its knobs from it and nowhere else.
``resolve_profile`` turns a requested profile into the one that can actually run on this machine,
logging one line for each setting it had to change.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.audio_io import MAX_REFERENCE_SECONDS, SAMPLE_RATE
from engine.errors import ConfigError
from engine.machine import device_name
from engine.sampling import MAX_NEW_TOKENS

log = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp16", "fp32"]
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
Quantization = Literal["none", "int8", "int4", "nf4"]
CodecLayout = Literal["auto", "upstream", "channels_last"]
CodecStreaming = Literal["auto", "context", "stateful"]
Int8Kernel = Literal["auto", "stock", "vnni", "amx"]

MAX_BATCH = 8
BATCH_SIZES = (1, 2, 4, 8)  # a frame step's batch is padded up to one of these

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

SAMPLES_PER_FRAME = 2048  # S1-mini's codec hop: 21.53 frames per second of audio
KV_BUCKET_MIN = 256
PROMPT_TEXT_ALLOWANCE = 512  # tokens of reference transcript + request text a prompt may hold
MAX_REFERENCE_FRAMES = math.ceil(MAX_REFERENCE_SECONDS * SAMPLE_RATE / SAMPLES_PER_FRAME)


def upstream_precision(device_type: str) -> str:
    """What upstream's ``init_model`` runs in: bf16 on a GPU, fp32 on the CPU."""
    return "bf16" if device_type == "cuda" else "fp32"


def kv_bucket(tokens: int, limit: int) -> int:
    """The smallest ``256 * 2**k`` holding ``tokens``, capped at ``limit`` (the cache length)."""
    bucket = KV_BUCKET_MIN
    while bucket < tokens:
        bucket *= 2
    return min(bucket, limit)


def batch_size(active: int) -> int:
    """The padded batch a frame step with ``active`` requests runs at: the smallest of
    ``BATCH_SIZES`` holding them."""
    return next(b for b in BATCH_SIZES if b >= active)


def reachable_buckets(limit: int) -> list[int]:
    """Every KV bucket a request can attend over with a cache of ``limit`` positions: a short
    ``max_new_tokens`` reaches the smallest, the default budget with a long reference the last."""
    buckets = [KV_BUCKET_MIN]
    while buckets[-1] < limit:
        buckets.append(kv_bucket(2 * buckets[-1], limit))
    return buckets


# The longest accepted reference plus a full frame budget fits: 90 s -> 1,938 frames, + 512 + 1,024.
DEFAULT_MAX_SEQ_LEN = kv_bucket(MAX_REFERENCE_FRAMES + PROMPT_TEXT_ALLOWANCE + MAX_NEW_TOKENS, 8192)
KV_BLOCK = 8  # upstream rounds the KV cache up to a multiple of this, but not the causal mask


class Provenance(BaseModel):
    """Where an exported profile came from, so loading it elsewhere can warn."""

    model_config = ConfigDict(extra="forbid")

    gpu_name: str | None = None
    compute_capability: str | None = None
    torch_version: str | None = None
    checkpoint_hash: str | None = None
    checkpoint_dir: str | None = Field(
        None,
        description="the folder the sweep measured; the service loads it when MODEL_DIR is unset",
    )
    mlflow_run_id: str | None = None
    hardware: str | None = None
    created_at: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    objective: Literal["latency", "throughput"] | None = Field(
        None,
        description="what the sweep chose this profile for: single-stream latency, or the most "
        "aggregate audio per second with every request faster than real time",
    )


class EngineProfile(BaseModel):
    """All engine knobs. Defaults are the safe, uncompiled, unquantized engine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Precision = "auto"
    tf32: bool = True
    compile_decode: CompileMode = "none"
    compile_codec: CompileMode = "none"
    compile_prefill: bool = False
    codec_layout: CodecLayout = Field(
        "auto",
        description="the codec decoder's convolutions as upstream runs them, or as channels-last "
        "2-D ones (engine/codec_layout.py); auto: channels_last on a CPU, upstream on CUDA",
    )
    codec_streaming: CodecStreaming = Field(
        "auto",
        description="streamed chunks decoded with codec_left_context frames of context each, or "
        "carrying every causal layer's state (engine/codec_stream.py: each frame decoded once, "
        "one-shot decoding's audio; needs the channels_last layout and an eager codec); auto: "
        "stateful where it can run",
    )
    fullgraph: bool = True
    quantization: Quantization = "none"
    int8_kernel: Int8Kernel = Field(
        "auto",
        description="CPU bf16 int8 layers on torch's own kernel (stock), on the AVX-512 VNNI one "
        "(engine/model/int8_kernel.py), or on that one with prefills on AMX int8 tiles (amx); "
        "auto: amx, else vnni, where this CPU and a C++ compiler can run them",
    )
    coordinate_descent_tuning: bool = Field(
        True, description="inductor's coordinate-descent tuning, set for every compiled row"
    )
    int4_group_size: Literal[32, 64, 128, 256] = 64
    max_seq_len: int = Field(
        DEFAULT_MAX_SEQ_LEN,
        ge=256,
        le=8192,
        description="static KV cache length (tokens), a multiple of 8, at most the checkpoint's",
    )
    chunk_size: int = Field(16, ge=1, le=1024, description="frames per streamed/decoded chunk")
    first_chunk_size: int = Field(
        4,
        ge=1,
        le=1024,
        description="frames in the first streamed chunk (sent as soon as made); "
        "resolve_profile lowers it to chunk_size when larger",
    )
    prefix_cache_mb: int = Field(
        256, ge=0, description="MiB of saved voice-prompt KV state (0 = off)"
    )
    codec_left_context: int = Field(
        32, ge=0, le=1024, description="frames of left context per chunk"
    )
    encode_chunk_seconds: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="reference audio encoded in chunks this long (at least one frame)",
    )
    num_streams: int = Field(1, ge=1, le=3)
    codec_thread: bool = Field(
        False,
        description="on a CPU, decode streamed chunks to audio on a thread of their own with one "
        "core, while the frames of the next chunk are generated (CUDA overlaps with num_streams)",
    )
    max_batch: int = Field(
        1,
        ge=1,
        le=MAX_BATCH,
        description="requests decoded together, one frame step for all (1 = one at a time)",
    )
    cache_limit: int = Field(64, ge=0)
    eos_check_interval: int = Field(
        8, ge=1, le=256, description="frames between end-of-speech checks"
    )
    warmup_buckets: list[int] | None = Field(
        None,
        description="KV buckets (256 * 2**k) whose compiled frame step warm-up builds; unset: "
        "every bucket up to max_seq_len, so no request compiles",
    )
    provenance: Provenance | None = None

    @field_validator("max_seq_len")
    @classmethod
    def _max_seq_len_whole_blocks(cls, value: int) -> int:
        if value % KV_BLOCK:
            raise ValueError(
                f"max_seq_len must be a multiple of {KV_BLOCK} "
                f"(the KV cache is allocated in blocks of {KV_BLOCK}), got {value}"
            )
        return value

    @field_validator("warmup_buckets")
    @classmethod
    def _warmup_buckets_are_buckets(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        wrong = [b for b in value if b < KV_BUCKET_MIN or b % KV_BUCKET_MIN or b & (b - 1)]
        if wrong:
            raise ValueError(f"KV buckets are 256 * 2**k tokens, got {wrong}")
        return sorted(set(value))

    def batch_sizes(self) -> list[int]:
        """The padded batch sizes a frame step runs at under this ``max_batch``: one compiled
        graph per size (and KV bucket), so a request joining never compiles."""
        return [b for b in BATCH_SIZES if b < self.max_batch] + [batch_size(self.max_batch)]

    def buckets_to_warm(self) -> list[int]:
        """The KV buckets warm-up compiles the frame step for, within this ``max_seq_len``."""
        if self.warmup_buckets is None:
            return reachable_buckets(self.max_seq_len)
        return sorted({kv_bucket(b, self.max_seq_len) for b in self.warmup_buckets})

    @model_validator(mode="before")
    @classmethod
    def _drop_kv_cache(cls, data: Any) -> Any:
        """Older exported profiles carry ``kv_cache: true``, which was never a choice: drop it."""
        if isinstance(data, dict) and "kv_cache" in data:
            data = dict(data)
            if not data.pop("kv_cache"):
                raise ValueError(
                    "kv_cache=false is not supported: AR decoding without a KV cache is quadratic"
                )
        return data

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
        """A profile YAML; a file that is not YAML or not a mapping is a one-line ConfigError."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of knob: value, got a {type(data).__name__}"
            )
        return cls.model_validate(data)

    @classmethod
    def from_env(
        cls, base: EngineProfile | None = None, env: dict[str, str] | None = None
    ) -> EngineProfile:
        """Apply the ``.env.example`` overrides (MIXED_PRECISION, QUANTIZATION, ...) to ``base``.

        A value that cannot be parsed is a ``ConfigError`` naming the variable; a value the profile
        rejects is a ``ValidationError`` whose errors name the variable and the knob.
        """
        env = dict(os.environ if env is None else env)
        data = (base or cls()).model_dump()
        sources: dict[str, str] = {}  # knob -> "VAR=value" that set it
        for var, apply in ENV_OVERRIDES.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            before = dict(data)
            try:
                apply(data, raw)
            except ValueError as exc:
                raise ConfigError(f"{var}: {exc}") from None
            sources |= {key: f"{var}={raw}" for key in data if data[key] != before[key]}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            if not any(err["loc"] and err["loc"][0] in sources for err in exc.errors()):
                raise
            raise _relabel(exc, sources) from None


_RELABELLED = "profile_override"  # pydantic error type of an error already phrased as one line


def _error_line(err: Any) -> str:
    """One pydantic error as ``<field>: <message>``, without repeating a field the message names."""
    if err["type"] == _RELABELLED:
        return err["msg"]
    field = ".".join(str(part) for part in err["loc"]) or "profile"
    error = (err.get("ctx") or {}).get("error")
    message = str(error) if err["type"] == "value_error" and error is not None else err["msg"]
    return message if message.startswith(field) else f"{field}: {message}"


def describe_validation_error(exc: ValidationError) -> str:
    """A ValidationError as one line: ``<field>: <message>``, joined with ``; `` if several."""
    return "; ".join(_error_line(err) for err in exc.errors())


def _relabel(exc: ValidationError, sources: dict[str, str]) -> ValidationError:
    """``exc`` with each error caused by an env override prefixed with ``VAR=value: ``."""
    details: list[InitErrorDetails] = []
    for err in exc.errors():
        line = _error_line(err)
        if err["loc"] and err["loc"][0] in sources:
            line = f"{sources[err['loc'][0]]}: {line}"
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(_RELABELLED, "{line}", {"line": line}),
                loc=err["loc"],
                input=err["input"],
            )
        )
    return ValidationError.from_exception_data(exc.title, details)


def _set(key: str, convert=str):
    def apply(data: dict[str, Any], raw: str) -> None:
        data[key] = convert(raw)

    return apply


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _quantization(data: dict[str, Any], raw: str) -> None:
    data["quantization"] = {"4bit": "nf4"}.get(raw.lower(), raw.lower())


def _boolean(raw: str) -> bool:
    if raw.lower() not in _TRUE | _FALSE:
        raise ValueError(f"expected true or false, got {raw!r}")
    return raw.lower() in _TRUE


def _enable_compile(data: dict[str, Any], raw: str) -> None:
    on = _boolean(raw)
    data["compile_decode"] = "reduce-overhead" if on else "none"
    data["compile_codec"] = "default" if on else "none"
    data["compile_prefill"] = on


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

ENV_OVERRIDES = {
    "MIXED_PRECISION": _set("precision", str.lower),
    "QUANTIZATION": _quantization,
    "ENABLE_TORCH_COMPILE": _enable_compile,
    "MAX_SEQ_LEN": _set("max_seq_len", _integer),
    "CHUNK_SIZE": _set("chunk_size", _integer),
    "FIRST_CHUNK_SIZE": _set("first_chunk_size", _integer),
    "NUM_STREAMS": _set("num_streams", _integer),
    "CACHE_LIMIT": _set("cache_limit", _integer),
    "MAX_BATCH": _set("max_batch", _integer),
    "CODEC_LAYOUT": _set("codec_layout", str.lower),
    "CODEC_STREAMING": _set("codec_streaming", str.lower),
    "CODEC_THREAD": _set("codec_thread", _boolean),
    "INT8_KERNEL": _set("int8_kernel", str.lower),
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
        """This machine; bitsandbytes' 4-bit kernels are only probed when nf4 is asked for.

        Stops (``PreflightError``) when an NVIDIA GPU is present that torch cannot use, rather
        than running silently on the CPU.
        """
        from engine.preflight import check_cuda_usable

        check_cuda_usable(requested)
        cuda = torch.cuda.is_available() and requested != "cpu"
        device = "cuda" if cuda else "cpu"
        nf4 = probe_bitsandbytes and _bitsandbytes_4bit_works(device)
        if not cuda:
            return cls("cpu", "cpu", None, nf4)
        return cls("cuda", device_name(), torch.cuda.get_device_capability(), nf4)

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


@dataclass(frozen=True)
class Fallback:
    """One knob this hardware cannot run as asked: what it runs instead, and why. The harness
    reads the fields; people read ``str()`` (``knob: asked -> runs (why)``)."""

    knob: str
    asked: Any
    runs: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.knob}: {self.asked} -> {self.runs} ({self.reason})"


class _Resolution:
    """A profile's knobs being resolved, and the fallbacks taken so far."""

    def __init__(self, requested: EngineProfile, hw: Hardware) -> None:
        self.data = requested.model_dump()
        self.hw = hw
        self.fallbacks: list[Fallback] = []

    def change(self, key: str, value: Any, why: str) -> None:
        if self.data[key] != value:
            self.fallbacks.append(Fallback(key, self.data[key], value, why))
            self.data[key] = value


def _on_cpu(r: _Resolution) -> None:
    data = r.data
    if data["precision"] == "auto":
        data["precision"] = "fp32"
    r.change("precision", "bf16" if data["precision"] == "bf16" else "fp32", "fp16 is GPU-only")
    data["tf32"] = False
    r.change("num_streams", 1, "CUDA streams need a CUDA device")
    if data["codec_layout"] == "auto":
        data["codec_layout"] = "channels_last"
    dynamic_int8 = data["quantization"] == "int8" and data["precision"] == "fp32"
    why_eager = "torch.compile cannot trace CPU dynamic-int8 linear layers"
    for key in ("compile_decode", "compile_codec"):
        if dynamic_int8:
            r.change(key, "none", why_eager)
        elif data[key] in ("reduce-overhead", "max-autotune"):
            r.change(key, "default", f"{data[key]} relies on CUDA graphs / Triton autotuning")
    if dynamic_int8:
        r.change("compile_prefill", False, why_eager)


def _on_cuda(r: _Resolution) -> None:
    data, hw = r.data, r.hw
    major = hw.compute_capability[0] if hw.compute_capability else 0
    too_old = f"needs compute capability 8.0, this GPU has {hw.capability_str}"
    if data["precision"] == "auto":
        data["precision"] = "bf16" if major >= 8 else "fp16"
    elif data["precision"] == "bf16" and major < 8:
        r.change("precision", "fp16", f"bf16 {too_old}")
    if data["tf32"] and major < 8:
        r.change("tf32", False, f"TF32 {too_old}")
    if data["codec_layout"] == "auto":
        data["codec_layout"] = "upstream"  # channels_last is measured on CPUs only
    r.change("codec_thread", False, "on CUDA the codec overlaps on a stream (num_streams)")
    if data["quantization"] == "int4" and data["precision"] != "bf16":
        r.change("quantization", "int8", "int4 (tinygemm) kernels need bf16 weights")
    if data["quantization"] == "int8" and data["compile_decode"] == "none":
        r.change(
            "quantization",
            "none",
            "CUDA int8 is fast only compiled (inductor fuses its dequantization into the "
            "matmul); eager it copies every weight to the float dtype per call",
        )
    if data["quantization"] == "int8" and not data["coordinate_descent_tuning"]:
        r.change(
            "coordinate_descent_tuning",
            True,
            "CUDA int8 is fused into the matmul only with inductor's coordinate-descent "
            "tuning; without it every call copies each weight to the float dtype",
        )


def _codec_streaming(r: _Resolution) -> None:
    data = r.data
    if data["codec_layout"] != "channels_last":
        why = "stateful streaming runs on the channels_last codec layout"
    elif data["compile_codec"] != "none":
        why = "stateful streaming runs the codec eager (its state is Python-side)"
    else:
        why = None
    if data["codec_streaming"] == "auto":
        data["codec_streaming"] = "context" if why else "stateful"
    elif data["codec_streaming"] == "stateful" and why:
        r.change("codec_streaming", "context", why)


def _int8_kernel(r: _Resolution) -> None:
    data = r.data
    amx_why = None
    if r.hw.device != "cpu":
        why = "the VNNI kernel is a CPU kernel (CUDA int8 is inductor's fused form)"
    elif data["quantization"] != "int8":
        why = "the VNNI kernel serves int8 weights"
    elif data["precision"] == "fp32":
        why = "fp32 int8 on a CPU is dynamic quantization (quantize_dynamic)"
    else:
        from engine.model.int8_kernel import amx_problem, problem

        why, amx_why = problem(), amx_problem()
    amx_why = why or amx_why
    if data["int8_kernel"] == "auto":
        data["int8_kernel"] = "stock" if why else "vnni" if amx_why else "amx"
    elif data["int8_kernel"] in ("vnni", "amx") and why:
        r.change("int8_kernel", "stock", why)
    elif data["int8_kernel"] == "amx" and amx_why:
        r.change("int8_kernel", "vnni", amx_why)


def _within_limits(r: _Resolution, model_max_seq_len: int | None) -> None:
    data = r.data
    if model_max_seq_len is not None and data["max_seq_len"] > model_max_seq_len:
        limit = model_max_seq_len // KV_BLOCK * KV_BLOCK
        if limit < KV_BUCKET_MIN:
            raise ConfigError(
                f"the checkpoint's config.json max_seq_len {model_max_seq_len} is below "
                f"the smallest supported max_seq_len {KV_BUCKET_MIN}"
            )
        r.change("max_seq_len", limit, f"the checkpoint's config.json allows {model_max_seq_len}")
    if data["first_chunk_size"] > data["chunk_size"]:
        chunk = data["chunk_size"]
        r.change("first_chunk_size", chunk, f"it cannot exceed chunk_size {chunk}")


def resolve_profile(
    requested: EngineProfile,
    hw: Hardware,
    model_max_seq_len: int | None = None,
    *,
    log_fallbacks: bool = True,
) -> tuple[EngineProfile, list[Fallback]]:
    """The profile that will actually run on ``hw`` and one ``Fallback`` per knob that changed.

    ``model_max_seq_len`` is the checkpoint's ``config.json`` ``max_seq_len`` (its RoPE table and
    causal mask are that long): a longer KV cache falls back to it, rounded down to whole blocks.
    Each fallback is logged as a warning unless ``log_fallbacks`` is off (a caller that only
    predicts, such as the sweep's estimate, would repeat the engine's warnings per trial).
    """
    r = _Resolution(requested, hw)
    if requested.device == "cuda" and hw.device != "cuda":
        r.fallbacks.append(Fallback("device", "cuda", "cpu", "CUDA is not available"))
    r.data["device"] = hw.device
    if r.data["quantization"] == "nf4" and not hw.bitsandbytes_4bit:
        r.change("quantization", "int8", "bitsandbytes 4-bit kernels are not available")
    if hw.device == "cuda":
        _on_cuda(r)
    else:
        _on_cpu(r)
    _codec_streaming(r)
    _int8_kernel(r)
    _within_limits(r, model_max_seq_len)
    for fallback in r.fallbacks if log_fallbacks else ():
        log.warning("profile fallback: %s", fallback)
    return EngineProfile.model_validate(r.data), r.fallbacks


def torch_dtype(profile: EngineProfile) -> torch.dtype:
    """The float dtype of a *resolved* profile."""
    if profile.precision == "auto":
        raise ValueError("resolve the profile before asking for its dtype")
    return DTYPES[profile.precision]
