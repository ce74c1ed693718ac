"""Every serving setting in one place, read from the environment or `.env`.

Engine knobs are not here: they live in the exported profile (PROFILE_PATH), optionally overridden
by the engine's own variables (MIXED_PRECISION, QUANTIZATION, ...; see ``EngineProfile.from_env``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.audio_io import MAX_REFERENCE_SECONDS
from engine.sampling import MAX_NEW_TOKENS


class Settings(BaseSettings):
    """Service configuration; field names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    model_dir: Path | None = Field(
        None,
        description="checkpoint folder; unset = the released folder, else the profile's, else "
        "the tiny synthetic one",
    )
    profile_path: Path = Field(Path("reports/profile.yaml"), description="exported engine profile")
    voices_dir: Path = Field(Path("voices"), description="persistent voice library")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(
        None, description="bearer key(s), comma-separated; unset = open"
    )
    queue_size: int = Field(8, ge=1, le=1024, description="requests waiting behind the running one")
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
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="frame budget per text chunk")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per key per minute; 0 = off")
    auth_failures_per_minute: int = Field(
        10, ge=1, description="wrong-key attempts per client address per minute before 429"
    )
    public_docs: bool = Field(False, description="serve /docs, /redoc, /openapi.json without key")
    allow_no_auth: bool = Field(
        False, description="allow a non-loopback HOST without API_KEY (an open server)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    warmup: bool = Field(True, description="run compile / graph capture before reporting ready")
    log_level: str = "INFO"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def api_keys(self) -> frozenset[str]:
        """The accepted bearer keys; empty means authentication is off."""
        raw = self.api_key.get_secret_value() if self.api_key else ""
        return frozenset(key.strip() for key in raw.split(",") if key.strip())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
