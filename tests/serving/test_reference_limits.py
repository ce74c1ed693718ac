"""One reference limit, stated in /health and applied with bounded memory and concurrency.

A compressed hour of silence sent to the live server is refused without the server's peak RSS
growing (the old decoder held all of it: ~600 MB per hour at 44.1 kHz), and at most
``decode_concurrency`` uploads are decoded at once.
"""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from starlette.datastructures import UploadFile

import serving.services.speech as speech_module
from engine.audio_io import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS, SAMPLE_RATE, decode_audio
from engine.sampling import DEFAULT_SAMPLING, TEMPERATURE_MAX, TOP_P_MAX
from engine.text import SpokenForm
from serving.services.asr import Transcriber
from serving.services.metrics import MetricsStore
from serving.services.speech import SpeechService
from serving.services.voices import VoiceLibrary
from serving.services.worker import EngineWorker
from serving.settings import Settings

MB = 2**20


def silent_flac(rate: int, seconds: int) -> bytes:
    """``seconds`` of silence, written a minute at a time (an hour is ~500 KB of FLAC)."""
    buffer = io.BytesIO()
    minute = np.zeros(rate * 60, dtype=np.float32)
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC") as out:
        for _ in range(seconds // 60):
            out.write(minute)
    return buffer.getvalue()


def without_length(flac: bytes) -> bytes:
    """The FLAC as a streaming encoder writes it: STREAMINFO's sample count is 0 (unknown)."""
    data = bytearray(flac)
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    return bytes(data)


def tone_flac(seconds: float, rate: int = 8_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.service
def test_health_states_the_limits_the_service_applies(client: httpx.Client) -> None:
    limits = client.get("/health").json()["limits"]
    assert limits == {
        "max_reference_seconds": MAX_REFERENCE_SECONDS,
        "min_reference_seconds": MIN_REFERENCE_SECONDS,
        "max_upload_mb": 2.0,  # the test server's MAX_UPLOAD_MB
        "max_body_mb": Settings.model_fields["max_body_mb"].default,
        "max_text_chars": Settings.model_fields["max_text_chars"].default,
        "controls": {
            "temperature": {
                "default": DEFAULT_SAMPLING.temperature,
                "minimum": 0.0,
                "maximum": TEMPERATURE_MAX,
                "exclusive_minimum": True,
            },
            "top_p": {
                "default": DEFAULT_SAMPLING.top_p,
                "minimum": 0.0,
                "maximum": TOP_P_MAX,
                "exclusive_minimum": True,
            },
            "speed": {"default": 1.0, "minimum": 0.25, "maximum": 4.0, "exclusive_minimum": False},
        },
    }
    assert Settings.model_fields["max_reference_seconds"].default == MAX_REFERENCE_SECONDS


@pytest.mark.service
def test_a_reference_just_under_the_stated_limit_decodes_and_just_over_is_refused(
    client: httpx.Client,
) -> None:
    limit = client.get("/health").json()["limits"]["max_reference_seconds"]
    audio = decode_audio(tone_flac(limit - 0.5), max_seconds=limit)
    assert len(audio) == pytest.approx((limit - 0.5) * SAMPLE_RATE)
    response = client.post(
        "/tts", data={"text": "hi"}, files={"speaker_file": ("r.flac", tone_flac(limit + 0.5))}
    )
    assert response.status_code == 422, response.text
    assert f"the limit is {limit:g} s" in response.json()["message"]


@pytest.mark.service
@pytest.mark.parametrize(
    "make, clue",
    [
        (lambda: silent_flac(44_100, 3600), "reference audio is 3600.0 s; the limit is 90 s"),
        (lambda: without_length(silent_flac(44_100, 3600)), "longer than 90 s; the limit is 90 s"),
    ],
    ids=["hour of silence", "hour of silence without length"],
)
def test_a_decompression_bomb_is_refused_without_memory_growth(
    client: httpx.Client, server, make, clue: str
) -> None:
    bomb = make()
    assert len(bomb) < 600_000
    pid = server.process.pid
    client.get("/health")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now
    before = status_kib(pid, "VmRSS")
    response = client.post("/tts", data={"text": "hi"}, files={"speaker_file": ("s.flac", bomb)})
    growth_mb = (status_kib(pid, "VmHWM") - before) / 1024
    assert growth_mb < 50, f"server peak RSS grew {growth_mb:.0f} MB to refuse {len(bomb)} bytes"
    assert response.status_code == 422, response.text
    assert clue in response.json()["message"]


def test_at_most_decode_concurrency_uploads_are_decoded_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None, decode_concurrency=2)
    service = SpeechService(
        settings,
        EngineWorker(lambda: None, 1),
        VoiceLibrary(tmp_path / "voices"),
        MetricsStore(),
        Transcriber(),
        SpokenForm(),
    )
    lock, running, peak = threading.Lock(), [0], [0]

    def counted_decode(data: bytes, **kwargs: float) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return decode_audio(data, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(speech_module, "decode_audio", counted_decode)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (44_100 * 30, 2)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, noise, 44_100, format="FLAC")
    data = buffer.getvalue()

    async def upload_six() -> list[np.ndarray | None]:
        uploads = [
            UploadFile(io.BytesIO(data), size=len(data), filename="r.flac") for _ in range(6)
        ]
        return await asyncio.gather(*(service.read_reference(u) for u in uploads))

    decoded = asyncio.run(upload_six())
    assert all(audio is not None and len(audio) == 30 * SAMPLE_RATE for audio in decoded)
    assert peak[0] == 2
