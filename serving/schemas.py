"""Request and response models of every route (the OpenAPI schema is generated from these)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from engine.sampling import DEFAULT_SAMPLING, TEMPERATURE_MAX, TOP_P_MAX

AudioFormat = Literal["wav", "pcm", "mp3", "opus", "flac", "aac"]

SEED_MAX = 2**31 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_TEXT = (
    "{where} holds a lone UTF-16 surrogate (such as \\ud800), which is not text: send valid Unicode"
)

# NaN and infinity are refused as what they are, not as "greater than" the bounds.
Temperature = Annotated[
    float,
    Field(gt=0, le=TEMPERATURE_MAX, allow_inf_nan=False, description="sampling temperature"),
]
TopP = Annotated[
    float, Field(gt=0, le=TOP_P_MAX, allow_inf_nan=False, description="nucleus sampling mass")
]
Speed = Annotated[
    float,
    Field(ge=0.25, le=4.0, allow_inf_nan=False, description="tempo factor; pitch is kept"),
]
Normalize = Annotated[
    bool | None,
    Field(description="speak numbers, money, dates, units as words; unset: the server's NORMALIZE"),
]
Seed = Annotated[
    int | None, Field(ge=0, le=SEED_MAX, description="chunk i uses seed + i; random if unset")
]


def lone_surrogate(value: object, where: str = "") -> str | None:
    """Where in ``value`` (parsed JSON: dicts, lists, strings) a string holds a lone UTF-16
    surrogate (JSON's ``"\\ud800"`` parses to one), or None. Such a string is not Unicode text:
    nothing can encode it, so it fails wherever it is written (a response, a file, a log)."""
    if isinstance(value, str):
        return (where or "the text") if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        path = f"{where}.{str(key)[:40]}" if where else str(key)[:40]
        if (found := lone_surrogate(key, f"a key in {where or 'the body'}")) or (
            found := lone_surrogate(item, path)
        ):
            return found
    return None


class RequestBody(BaseModel):
    """A request model whose text must be Unicode: a lone surrogate anywhere is a 422 when the
    body is read, before anything is generated or saved."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: object) -> object:
        if where := lone_surrogate(data):
            raise PydanticCustomError("invalid_text", NOT_TEXT, {"where": where})
        return data


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="stable machine-readable code, e.g. queue_full")
    message: str = Field(description="what went wrong, for people")
    type: str = Field(
        description="category: invalid_request_error, rate_limit_error, server_error, ..."
    )
    request_id: str | None = Field(
        None, description="500s only: the id under which the server logged the traceback"
    )


class TTSForm(RequestBody):
    """POST /tts form fields (the reference recording comes as the ``speaker_file`` part)."""

    text: str = Field(description="text to speak; S1 markers like (excited) are allowed")
    reference_text: str | None = Field(
        None, max_length=2000, description="transcript of speaker_file"
    )
    voice_id: str | None = Field(None, description="a saved voice instead of speaker_file")
    language: str | None = Field(
        None,
        max_length=16,
        description="accepted for compatibility; S1 infers the language from the text",
    )
    temperature: Temperature = DEFAULT_SAMPLING.temperature
    top_p: TopP = DEFAULT_SAMPLING.top_p
    speed: Speed = 1.0
    seed: Seed = None
    optimize_for_memory: bool = Field(
        False, description="decode audio in bounded chunks, free cached VRAM"
    )
    format: AudioFormat = "wav"
    stream: bool = Field(False, description="stream audio as it is generated (no metric headers)")
    normalize: Normalize = None
    timestamps: bool = Field(
        False,
        description="word timings in the x-words header (base64url JSON); not with stream",
    )


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object form, ``{"id": "..."}``."""

    id: str


class SpeechOptions(RequestBody):
    """How to speak: the fields the OpenAI body and the WebSocket start message share."""

    speed: Speed = 1.0
    temperature: Temperature = DEFAULT_SAMPLING.temperature
    top_p: TopP = DEFAULT_SAMPLING.top_p
    seed: Seed = None
    normalize: Normalize = None


class SpeechRequest(SpeechOptions):
    """OpenAI ``audio.speech.create`` body, plus optional fishbench sampling fields."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("s1-mini", description="any value; one model is served")
    input: str = Field(description="text to speak")
    voice: str | VoiceRef = Field(
        "default",
        description="a voice-library id; 'default' or an OpenAI voice name = unconditioned",
    )
    response_format: AudioFormat = "mp3"
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(
        None, description="ignored; use S1 markers in the input instead"
    )


class WordTiming(BaseModel):
    word: str
    start: float = Field(description="seconds into the returned audio")
    end: float
    aligned: bool = Field(description="false: not heard by the aligner, placed between neighbours")


class CaptionedSpeech(BaseModel):
    """POST /v1/audio/speech/captioned: the audio and when each word is spoken in it."""

    audio: str = Field(description="the audio file in ``format``, base64")
    format: AudioFormat
    sample_rate: int
    duration_s: float
    text: str = Field(description="the spoken form the engine was asked to say")
    words: list[WordTiming]
    alignment: str = Field(
        description="how the times were found, or 'unavailable: <why>' with no words"
    )


class SpeechStreamStart(SpeechOptions):
    """The optional first message of ``WS /v1/audio/speech/stream`` (without its ``type``)."""

    model_config = ConfigDict(extra="forbid")

    voice: str = Field("default", description="a voice-library id, or 'default'")


class NormalizeRequest(RequestBody):
    """POST /normalize: the text a request would speak, without speaking it."""

    text: str = Field(description="written text")
    voice_id: str | None = Field(None, description="also apply this voice's pronunciations")
    normalize: Normalize = None


class NormalizedText(BaseModel):
    text: str = Field(description="the spoken form the engine would receive")
    normalized: bool = Field(description="whether spoken-form normalisation ran")


class PronunciationList(RequestBody):
    """A voice's ``written: spoken`` entries (rules: whole words; lower-case entries match any
    case, entries with a capital match exactly; longer entries first).

    ``entries`` is required and nothing else is accepted: a PUT of ``{}`` or of a misspelt key
    would otherwise replace the list with an empty one; ``{"entries": {}}`` empties it on purpose.
    """

    model_config = ConfigDict(extra="forbid")

    entries: dict[str, str] = Field(examples=[{"SQL": "sequel"}])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fishbench"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VoiceName(BaseModel):
    id: str
    name: str


class OpenAIVoiceList(BaseModel):
    voices: list[VoiceName]


class VoiceInfo(BaseModel):
    """A saved voice as listed (audio and codes stay on the server)."""

    id: str
    name: str
    transcript: str
    transcript_source: Literal["user", "asr"]
    duration_s: float
    created_at: str


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


class Deleted(BaseModel):
    id: str
    deleted: bool = True


class ControlRange(BaseModel):
    """One numeric request field's default and bounds, for a client to build its slider."""

    default: float
    minimum: float = Field(description="lowest value; excluded when exclusive_minimum is set")
    maximum: float
    exclusive_minimum: bool = False


def control_ranges(model: type[BaseModel], names: tuple[str, ...]) -> dict[str, ControlRange]:
    """The ranges of ``names`` as ``model`` validates them, so clients never restate them."""
    properties = model.model_json_schema()["properties"]
    return {
        name: ControlRange(
            default=spec["default"],
            minimum=spec.get("exclusiveMinimum", spec.get("minimum")),
            maximum=spec["maximum"],
            exclusive_minimum="exclusiveMinimum" in spec,
        )
        for name, spec in ((name, properties[name]) for name in names)
    }


class ServiceLimits(BaseModel):
    """The input limits this server enforces: ``Settings`` values under the engine's ceilings."""

    max_reference_seconds: float = Field(description="longest reference recording")
    min_reference_seconds: float = Field(description="shortest reference recording")
    max_upload_mb: float = Field(description="largest reference upload (MAX_UPLOAD_MB)")
    max_body_mb: float = Field(description="largest JSON request body (MAX_BODY_MB)")
    max_text_chars: int = Field(description="longest text per request (MAX_TEXT_CHARS)")
    controls: dict[str, ControlRange] = Field(
        description="defaults and bounds of temperature, top_p and speed (the UIs' sliders)"
    )


class HealthResponse(BaseModel):
    """Readiness plus what the engine runs with; GPU fields are null on CPU."""

    status: Literal["loading", "ready", "failed", "stopped"]
    message: str | None = None
    device: str | None = None
    device_name: str | None = None
    compute_capability: str | None = None
    dtype: str | None = None
    compiled: bool | None = None
    compile_decode: str | None = None
    compile_codec: str | None = None
    quantization: str | None = None
    profile_source: str
    profile: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    fallbacks: list[str] = Field(default_factory=list)
    checkpoint: str
    synthetic_checkpoint: bool | None = None
    warmup_s: float | None = None
    max_batch: int | None = Field(
        None, description="requests decoded together, and run at once by the worker (MAX_BATCH)"
    )
    objective: Literal["latency", "throughput"] | None = Field(
        None, description="what the sweep chose the profile for, when it says"
    )
    queue_depth: int = 0
    limits: ServiceLimits


class Percentiles(BaseModel):
    p50: float | None = None
    p95: float | None = None
    mean: float | None = None
    count: int = 0


class CacheStats(BaseModel):
    entries: int
    hits: int
    misses: int
    hit_rate: float
    bytes: int | None = None  # byte-bounded caches (the voice prompt K/V) only
    limit_bytes: int | None = None


class MetricsResponse(BaseModel):
    """Rolling figures over the last ``window`` completed requests; GPU figures null on CPU."""

    window: int
    uptime_s: float
    requests: dict[str, int]
    latency_ms: Percentiles
    ttfa_ms: Percentiles
    rtf: Percentiles
    stream_rtf: Percentiles = Field(
        description="per request: seconds from the first audio chunk to the last over the audio "
        "after the first (at or below 1: playback never runs dry)"
    )
    stage_ms_per_frame: dict[str, float | None] = Field(
        description="mean prefill, decode and codec milliseconds per generated frame"
    )
    queue_wait_ms: Percentiles = Field(
        description="queued until a job thread took the request, plus waits for a decoding slot"
    )
    frames_per_s: Percentiles = Field(description="per request: frames per second of decoding")
    batch_occupancy_mean: float | None = Field(
        description="mean requests decoding together, over the window's decoded text chunks; "
        "1.0 one at a time, null before any"
    )
    peak_vram_mb: float | None
    gpu_util_pct: float | None
    queue_depth: int
    queue_capacity: int
    caches: dict[str, CacheStats]
    frames_generated: int | None = Field(
        None, description="frames the decoder made since start (cache hits excluded); null loading"
    )
    last: dict[str, Any] | None = Field(None, description="the latest request's own figures")


class CacheCleared(BaseModel):
    cleared: dict[str, int]


class EmotionList(BaseModel):
    """S1 markers by category; write them in parentheses in the text."""

    markers: dict[str, list[str]]
    usage: str
