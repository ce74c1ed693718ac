"""The one HTTP client both UIs use to talk to the fishbench service.

Every call raises :class:`ServiceError` with a sentence a person can read, whether the service is
down, still loading or refused the request; optional fields in the answers may be missing.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    """The service could not be reached or refused a request; ``str(error)`` is for people."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def api_url() -> str:
    """The service base URL: ``API_URL`` from the environment, else the local default."""
    return os.environ.get("API_URL", "").strip().rstrip("/") or DEFAULT_API_URL


@dataclass(frozen=True)
class Figures:
    """Per-request measurements; ``None`` where the service did not report one."""

    latency_ms: float | None = None
    ttfa_ms: float | None = None
    peak_vram_mb: float | None = None
    gpu_util_pct: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Figures:
        """Read the ``x-latency-ms``-style headers of a non-streaming ``/tts`` answer."""
        return cls(
            latency_ms=_number(headers.get("x-latency-ms")),
            ttfa_ms=_number(headers.get("x-ttfa-ms")),
            peak_vram_mb=_number(headers.get("x-peak-vram-mb")),
            gpu_util_pct=_number(headers.get("x-gpu-util-pct")),
        )

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Figures:
        """The most recent (or median) figures of the service's rolling ``/metrics``."""
        return cls(**{f.name: _metric(metrics, f.name) for f in fields(cls)})

    def filled_from(self, other: Figures) -> Figures:
        """These figures, with the missing ones taken from ``other``."""
        return replace(
            self,
            **{
                f.name: getattr(other, f.name)
                for f in fields(self)
                if getattr(self, f.name) is None
            },
        )


@dataclass(frozen=True)
class SynthesisRequest:
    """The ``POST /tts`` form; empty strings and ``None`` are left out of the request."""

    text: str
    reference_audio: str | Path | None = None
    reference_text: str = ""
    voice_id: str = ""
    language: str = ""
    temperature: float | None = None  # None: the service's default
    top_p: float | None = None
    speed: float | None = None
    seed: int | None = None
    normalize: bool | None = None  # None: the service's NORMALIZE
    timestamps: bool = False  # word timings (whole-file answers only)
    optimize_for_memory: bool = False

    def form(self, *, stream: bool) -> dict[str, str]:
        """The multipart text fields for WAV audio (the reference file goes separately)."""
        values = {
            "text": self.text,
            "reference_text": self.reference_text,
            "voice_id": self.voice_id,
            "language": self.language,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "speed": self.speed,
            "seed": self.seed,
            "normalize": self.normalize,
            "timestamps": True if self.timestamps and not stream else None,
            "optimize_for_memory": self.optimize_for_memory,
            "format": "wav",
            "stream": stream,
        }
        return {key: _form_value(value) for key, value in values.items() if value not in ("", None)}


@dataclass(frozen=True)
class SynthesisResult:
    """A finished synthesis: the audio file's bytes, its media type and the request's figures."""

    audio: bytes
    media_type: str
    figures: Figures
    words: list[dict[str, Any]] = field(default_factory=list)  # {word, start, end, aligned}
    alignment: str = ""  # how the words were timed, or why there are none; "" when not asked


class ServiceClient:
    """Thin wrapper over the service's REST API; one short-lived connection per call."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = (base_url or api_url()).rstrip("/")
        key = os.environ.get("API_KEY", "").split(",")[0].strip()  # the service accepts a list
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def health(self) -> dict[str, Any]:
        """``GET /health``: status, device, dtype, profile, fallbacks; answers while loading too."""
        try:
            return self._json("GET", "/health")
        except ServiceError as error:
            if isinstance(error.body, dict) and "status" in error.body:
                return error.body  # 503 while the model loads: still a health report
            raise

    def metrics(self) -> dict[str, Any]:
        """``GET /metrics``: the rolling figures as JSON."""
        return self._json("GET", "/metrics")

    def emotions(self) -> list[str]:
        """``GET /emotions`` flattened to markers as written in text, such as ``(excited)``."""
        payload = self._json("GET", "/emotions")
        markers = payload.get("markers", payload) if isinstance(payload, dict) else payload
        if isinstance(markers, dict):
            markers = [
                name for group in markers.values() if isinstance(group, list) for name in group
            ]
        names = (str(name).strip().strip("()") for name in _items(markers))
        return [f"({name})" for name in names if name]

    def voices(self) -> list[dict[str, Any]]:
        """``GET /voices``: the saved voices, each a dict with at least an ``id``."""
        voices = _items(self._json("GET", "/voices"), "voices")
        return [voice for voice in voices if isinstance(voice, dict)]

    def save_voice(
        self, audio_path: str | Path, voice_id: str, name: str = "", transcript: str = ""
    ) -> dict[str, Any]:
        """``POST /voices``: store a reference recording in the voice library under ``voice_id``."""
        fields_ = {"voice_id": voice_id, "name": name, "transcript": transcript}
        data = {key: value for key, value in fields_.items() if value}
        with open(audio_path, "rb") as audio:
            files = {"audio": (Path(audio_path).name, audio, "application/octet-stream")}
            return self._json("POST", "/voices", data=data, files=files)

    def spoken_form(self, text: str, voice_id: str = "", normalize: bool | None = None) -> str:
        """``POST /normalize``: what the engine would be asked to say for ``text``."""
        body = {"text": text, "voice_id": voice_id or None, "normalize": normalize}
        return str(self._json("POST", "/normalize", json=body).get("text", ""))

    def pronunciations(self, voice_id: str) -> dict[str, str]:
        """``GET /voices/{id}/pronunciations``: the voice's ``written: spoken`` entries."""
        return dict(self._json("GET", f"/voices/{voice_id}/pronunciations").get("entries", {}))

    def set_pronunciations(self, voice_id: str, entries: dict[str, str]) -> dict[str, str]:
        """``PUT /voices/{id}/pronunciations``: replace the voice's list."""
        body = {"entries": entries}
        return dict(self._json("PUT", f"/voices/{voice_id}/pronunciations", json=body)["entries"])

    def synthesize(self, request: SynthesisRequest) -> SynthesisResult:
        """``POST /tts`` without streaming: the whole file plus the service's figures."""
        started = time.perf_counter()
        with _reference_file(request.reference_audio) as files:
            response = self._request("POST", "/tts", data=request.form(stream=False), files=files)
        measured = Figures(latency_ms=(time.perf_counter() - started) * 1000)
        media_type = response.headers.get("content-type", "audio/wav").split(";")[0]
        words = response.headers.get("x-words")
        return SynthesisResult(
            response.content,
            media_type,
            Figures.from_headers(response.headers).filled_from(measured),
            json.loads(base64.urlsafe_b64decode(words)) if words else [],
            response.headers.get("x-alignment", ""),
        )

    def stream(self, request: SynthesisRequest) -> Iterator[bytes]:
        """``POST /tts`` with ``stream=true``: the WAV body as it arrives. Closing it cancels."""
        with (
            _reference_file(request.reference_audio) as files,
            self._client() as client,
            _translated_errors(self.base_url),
            client.stream("POST", "/tts", data=request.form(stream=True), files=files) as response,
        ):
            if response.is_error:
                response.read()
                raise _refusal(response)
            yield from response.iter_bytes()

    def _client(self) -> httpx.Client:
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._client() as client, _translated_errors(self.base_url):
            response = client.request(method, path, **kwargs)
        if response.is_error:
            raise _refusal(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ServiceError(
                f"The service answered {path} with something that is not JSON."
            ) from exc


@contextmanager
def _translated_errors(base_url: str) -> Iterator[None]:
    """Turn transport failures into a readable :class:`ServiceError`."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise ServiceError(f"The service is not reachable at {base_url}. Is it running?") from exc
    except httpx.TimeoutException as exc:
        raise ServiceError(f"The service at {base_url} did not answer in time.") from exc
    except httpx.HTTPError as exc:
        raise ServiceError(f"The connection to {base_url} failed: {exc}") from exc


@contextmanager
def _reference_file(path: str | Path | None) -> Iterator[dict[str, Any] | None]:
    """The optional reference recording, opened as the ``speaker_file`` multipart field."""
    if not path:
        yield None
        return
    with open(path, "rb") as handle:
        yield {"speaker_file": (Path(path).name, handle, "application/octet-stream")}


def _refusal(response: httpx.Response) -> ServiceError:
    """A :class:`ServiceError` from an error answer's ``{error, message, type}`` body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = _error_text(body) or response.text.strip() or response.reason_phrase
    message = f"The service refused the request ({response.status_code}): {detail}"
    return ServiceError(message, response.status_code, body)


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                return _error_text(body[key])
        return ""
    if isinstance(body, list):  # FastAPI validation errors
        return "; ".join(_error_text(item) or str(item) for item in body)
    return "" if body is None else str(body)


def _items(payload: Any, *keys: str) -> list[Any]:
    """A list answer, whether bare or wrapped in an object under one of ``keys``."""
    if isinstance(payload, dict):
        payload = next((payload[key] for key in keys if isinstance(payload.get(key), list)), [])
    return list(payload) if isinstance(payload, list) else []


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN means "not measured"


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    """``name`` from ``/metrics``: a plain number, or the last/p50 of a nested summary."""
    for source in (metrics.get("last"), metrics):
        value = source.get(name) if isinstance(source, Mapping) else None
        if isinstance(value, Mapping):
            value = value.get("last", value.get("p50"))
        if _number(value) is not None:
            return _number(value)
    return None


def _form_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
