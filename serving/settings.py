"""Every serving setting in one place, read from the environment or `.env`.

Engine knobs are not here: they live in the exported profile (PROFILE_PATH), optionally overridden
by the engine's own variables (MIXED_PRECISION, QUANTIZATION, ...; see ``EngineProfile.from_env``).
"""

from __future__ import annotations

import logging
import os
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.audio_io import MAX_REFERENCE_SECONDS
from engine.paths import ACTIVE_PROFILE
from engine.profile import ENV_OVERRIDES
from engine.sampling import MAX_NEW_TOKENS

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Service configuration; field names are the environment variables, case-insensitive.

    The one reader of ``.env``: it also carries the engine's profile overrides (``engine_env``)
    and warns about a key that looks like a misspelt setting instead of dropping it silently.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="allow", case_sensitive=False)

    model_dir: Path | None = Field(
        None,
        description="checkpoint folder; unset = the released folder, else the profile's, else "
        "the tiny synthetic one",
    )
    profile_path: Path = Field(ACTIVE_PROFILE, description="exported engine profile")
    voices_dir: Path = Field(Path("voices"), description="persistent voice library")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(
        None, description="bearer key(s), comma-separated; unset = open"
    )
    queue_size: int = Field(
        8, ge=1, le=1024, description="requests waiting behind the running ones"
    )
    max_upload_mb: float = Field(10.0, gt=0, description="largest accepted reference upload")
    max_body_mb: float = Field(1.0, gt=0, description="largest JSON request body")
    max_reference_seconds: float = Field(
        MAX_REFERENCE_SECONDS,
        gt=0,
        le=MAX_REFERENCE_SECONDS,
        description="longest reference audio (the engine's limit is the ceiling)",
    )
    decode_concurrency: int = Field(
        2, ge=1, le=64, description="reference uploads decoded at once (memory bound)"
    )
    max_text_chars: int = Field(5000, ge=1, description="longest text one request may carry")
    text_chunk_chars: int = Field(300, ge=20, le=2000, description="sentence-packed chunk size")
    normalize: bool = Field(
        True, description="speak numbers, dates, money as words; a request's normalize overrides"
    )
    normalize_budget_s: float = Field(
        10.0,
        gt=0,
        description="seconds one request's normalisation may take; the rest is spoken as written",
    )
    pronunciations: Path | None = Field(
        None, description="YAML of written: spoken entries applied to every request"
    )
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="frame budget per text chunk")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per key per minute; 0 = off")
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        description="failures of one wrong key from one address, or different wrong keys from "
        "one address, per minute before 429",
    )
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="balancer addresses (IPs or CIDRs, comma-separated) whose X-Forwarded-For "
        "names the client; empty = trust none",
    )
    proxy_secret: SecretStr | None = Field(
        None,
        description="a secret the balancer sends in X-Proxy-Secret; when set, X-Forwarded-For is "
        "believed only from requests carrying it",
    )
    max_header_kb: int = Field(
        32, ge=1, le=1024, description="request line and headers together; larger is a 431"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a connection may take to send a request's headers"
    )
    max_connections: int = Field(
        512, ge=1, description="open connections per process; more are answered 503 and closed"
    )
    socket_idle_timeout_s: float = Field(
        60.0, gt=0, description="close a speech socket silent this long while nothing is spoken"
    )
    public_docs: bool = Field(False, description="serve /docs, /redoc, /openapi.json without key")
    allow_no_auth: bool = Field(
        False, description="allow a non-loopback HOST without API_KEY (an open server)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="web page origins allowed to call the service from a browser; empty = none",
    )
    warmup: bool = Field(True, description="run compile / graph capture before reporting ready")
    log_level: str = "INFO"

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _warn_misspelt(self) -> Settings:
        known = [name.upper() for name in type(self).model_fields] + list(ENV_OVERRIDES)
        for key in self.model_extra or {}:
            key = key.upper()
            if key not in ENV_OVERRIDES and (close := get_close_matches(key, known, 1, 0.8)):
                log.warning(
                    "%s in .env is not a setting and is ignored; did you mean %s?", key, close[0]
                )
        return self

    def engine_env(self) -> dict[str, str]:
        """The engine's overrides (MIXED_PRECISION, ...): the process environment over ``.env``."""
        from_file = {
            key.upper(): str(value)
            for key, value in (self.model_extra or {}).items()
            if key.upper() in ENV_OVERRIDES and value is not None
        }
        return from_file | dict(os.environ)

    @property
    def api_keys(self) -> frozenset[str]:
        """The accepted bearer keys; empty means authentication is off."""
        raw = self.api_key.get_secret_value() if self.api_key else ""
        return frozenset(key.strip() for key in raw.split(",") if key.strip())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def proxy_secret_value(self) -> str:
        """PROXY_SECRET; '' when unset or empty."""
        return self.proxy_secret.get_secret_value() if self.proxy_secret else ""

    @property
    def max_header_bytes(self) -> int:
        return self.max_header_kb * 1024
