"""Fast tests of the serving pieces that need no model and no server."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import RequestError
from engine.text import NormalizationStopped, Pronunciations
from engine.text.sentences import check_text, split_text
from serving.errors import InvalidInput, QueueFull, RateLimited
from serving.services.audio import encode_all, make_encoder
from serving.services.metrics import MetricsStore
from serving.services.ratelimit import RateLimiter
from serving.services.speech import SpeechService
from serving.services.synthesis import RequestStats, SynthesisStream
from serving.services.voices import check_voice_id
from serving.services.worker import EngineWorker, Job
from serving.settings import Settings

RATE = 44_100


def test_split_keeps_sentences_whole_and_in_order() -> None:
    text = (
        "One. Two! Three? " + "Four is a much longer sentence, with a clause, and more words. " * 3
    )
    chunks = split_text(text, 70)
    assert all(len(c) <= 70 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert chunks[0] == "One. Two! Three?"


def test_split_handles_cjk_and_unpunctuated_text() -> None:
    assert split_text("你好。今天天气很好！", 5) == ["你好。", "今天天气很", "好！"]
    words = "word " * 50
    assert all(len(c) <= 30 for c in split_text(words, 30))


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(RequestError, match="empty"):
        check_text(text, 10)


@pytest.mark.parametrize(
    "text",
    ["\u200b\u200b", "\x00\x00", "\u2060\ufeff\u200d", "\u200b\u3000\u200b", "\u0301", "\x1b\x07"],
    ids=["zero-width", "NUL", "joiners", "ideographic space", "lone accent", "controls"],
)
def test_text_with_nothing_speakable_is_rejected(text: str) -> None:
    with pytest.raises(RequestError, match="nothing to speak"):
        check_text(f" {text} ", 100)


@pytest.mark.parametrize("text", ["(laughing)", "...", "3", "\u200bhi\u200b", "你好"])
def test_markers_punctuation_and_marked_words_are_speakable(text: str) -> None:
    assert check_text(text, 100) == text


class LongNormalisation:
    """A normalisation that outlasts its client: the real one is bounded well under a second
    once its grammars are loaded, too short to hang up in the middle of. It runs until told to
    stop, like the real one polling ``stop`` between spans, and records what it was given."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.budget_s: float | None = None
        self.stopped_after_s: float | None = None

    def __call__(
        self,
        text: str,
        *,
        normalize: bool,
        voice: Pronunciations | None,
        stop: Callable[[], bool],
        budget_s: float,
    ) -> str:
        self.budget_s = budget_s
        self.started.set()
        began = time.monotonic()
        while time.monotonic() - began < 60:
            if stop():
                self.stopped_after_s = time.monotonic() - began
                raise NormalizationStopped("the caller gave up")
            time.sleep(0.01)
        return text


def test_a_client_gone_during_normalisation_stops_it_and_counts_cancelled() -> None:
    """Cancelling the request (what a disconnect does) tells the normaliser to stop at its next
    check, counts the request ``cancelled`` and queues nothing; NORMALIZE_BUDGET_S is passed on."""
    normaliser = LongNormalisation()
    metrics = MetricsStore()

    async def hang_up() -> None:
        settings = Settings(_env_file=None, normalize_budget_s=3.5)
        speech = SpeechService(settings, None, None, metrics, None, normaliser)  # type: ignore[arg-type]
        request = asyncio.create_task(speech.speak("On 3/4/2025.", temperature=0.7, top_p=0.7))
        assert await asyncio.to_thread(normaliser.started.wait, 30)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(hang_up())
    deadline = time.monotonic() + 30
    while normaliser.stopped_after_s is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert normaliser.stopped_after_s is not None, "the normaliser was never told to stop"
    assert normaliser.budget_s == 3.5
    assert metrics.outcomes["cancelled"] == 1 and sum(metrics.outcomes.values()) == 1


def test_overlong_text_is_rejected() -> None:
    with pytest.raises(RequestError, match="MAX_TEXT_CHARS"):
        check_text("a" * 11, 10, "MAX_TEXT_CHARS")


@pytest.mark.parametrize("voice_id", ["..", "../x", "a/b", ".hidden", "", "x" * 65, "a\\b", "é"])
def test_unsafe_voice_ids_are_rejected(voice_id: str) -> None:
    with pytest.raises(InvalidInput):
        check_voice_id(voice_id)


@pytest.mark.parametrize("voice_id", ["joe", "Joe_2", "en-us.narrator", "7"])
def test_safe_voice_ids_pass(voice_id: str) -> None:
    assert check_voice_id(voice_id) == voice_id


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "aac"])
def test_streamed_chunks_form_one_decodable_file(fmt: str) -> None:
    encoder = make_encoder(fmt, RATE)
    parts = [encoder.encode(chunk) for chunk in np.array_split(tone(1.0), 7)]
    data = b"".join(parts) + encoder.finish()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(stream)) / stream.rate
    assert seconds == pytest.approx(1.0, abs=0.06)
    if fmt == "wav":
        assert data.count(b"RIFF") == 1 and data[4:8] == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_streamed_files_read_with_soundfile(fmt: str) -> None:
    """libsndfile reads a FLAC STREAMINFO total of 0 (unknown) as SF_COUNT_MAX and fails."""
    import soundfile as sf

    encoder = make_encoder(fmt, RATE)
    data = b"".join(encoder.encode(c) for c in np.array_split(tone(1.0), 7)) + encoder.finish()
    audio, rate = sf.read(io.BytesIO(data))
    assert len(audio) / rate == pytest.approx(1.0, abs=0.06)
    if fmt == "flac":
        assert len(audio) == RATE


def test_whole_wav_has_exact_sizes() -> None:
    data = encode_all("wav", tone(0.5), RATE)
    assert int.from_bytes(data[40:44], "little") == len(data) - 44


def test_pcm_is_clipped_s16le() -> None:
    data = encode_all("pcm", np.array([2.0, -2.0, 0.0], dtype=np.float32), RATE)
    assert np.frombuffer(data, "<i2").tolist() == [32767, -32767, 0]


def test_rate_limiter_window_per_key() -> None:
    limiter = RateLimiter(2)
    limiter.check("a", now=0.0)
    limiter.check("a", now=1.0)
    limiter.check("b", now=1.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("a", now=2.0)
    assert info.value.headers["Retry-After"] == "58"
    limiter.check("a", now=61.0)


def test_settings_parse_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "http://a, http://b")
    monkeypatch.setenv("API_KEY", "k1, k2")
    settings = Settings(_env_file=None)
    assert settings.cors_origins == ["http://a", "http://b"]
    assert settings.api_keys == {"k1", "k2"}
    assert "k1" not in repr(settings)


def test_one_env_file_reader_carries_engine_overrides_and_flags_misspellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=9000\nMIXED_PRECISION=bf16\nCHUNK_SIZE=32\nQUANTISATION=int8\nAPI_URL=http://ui\n"
    )
    monkeypatch.setenv("CHUNK_SIZE", "8")  # the process environment wins over the file
    with caplog.at_level(logging.WARNING, logger="serving.settings"):
        settings = Settings(_env_file=env_file)
    engine = settings.engine_env()
    assert settings.port == 9000
    assert engine["MIXED_PRECISION"] == "bf16" and engine["CHUNK_SIZE"] == "8"
    (warning,) = caplog.messages  # the UI's API_URL is someone else's key, not a typo
    assert "QUANTISATION" in warning and "QUANTIZATION" in warning


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``check``; a condition that never comes fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.01)


def test_worker_rejects_when_full_and_skips_cancelled_jobs() -> None:
    gate = threading.Event()
    ran: list[str] = []

    def work(name: str):
        def fn(engine: object, job: object) -> str:
            gate.wait(60)  # set by the test once the queue is checked
            ran.append(name)
            return name

        return fn

    async def scenario() -> None:
        worker = EngineWorker(lambda: object(), queue_size=1)
        worker.start()
        await until(lambda: worker.state == "ready", "the worker ready")
        running = worker.submit(work("running"))
        await until(lambda: running.started_at is not None, "the first job started")
        waiting = worker.submit(work("waiting"))
        with pytest.raises(QueueFull):
            worker.submit(work("refused"))
        waiting.cancel()
        gate.set()
        assert await running.wait() == "running"
        assert await waiting.wait() is None
        worker.stop()

    asyncio.run(scenario())
    assert ran == ["running"]


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "aac"])
def test_whole_files_decode(fmt: str) -> None:
    data = encode_all(fmt, tone(0.5), RATE)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert sum(frame.samples for frame in container.decode(stream)) / stream.rate > 0.4


def test_whole_flac_reads_with_soundfile() -> None:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(encode_all("flac", tone(0.5), RATE)))
    assert rate == RATE and len(audio) == int(0.5 * RATE)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_length_not_pitch_or_loudness(speed: float) -> None:
    from serving.services.audio import change_speed

    original = tone(1.0)
    changed = change_speed(original, speed)
    assert len(changed) == round(RATE / speed)
    spectrum = np.abs(np.fft.rfft(changed))
    assert np.fft.rfftfreq(len(changed), 1 / RATE)[spectrum.argmax()] == pytest.approx(440, abs=5)
    # A phase vocoder without phase locking blurs a slowed tone a little (librosa: 0.184 of 0.212
    # RMS at 0.5); a wrong starting phase loses most of it (torch's reflect padding: 0.04).
    assert rms(changed) == pytest.approx(rms(original), rel=0.2)


def test_audio_too_short_to_stretch_is_returned_as_it_is() -> None:
    from serving.services.audio import change_speed

    assert change_speed(tone(0.01), 2.0).size == int(0.01 * RATE)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples))))


def test_a_request_whose_speech_ends_at_once_is_a_clear_422_not_an_empty_file() -> None:
    """Zero-length chunks are no audio; a request with none at all says so before responding, and
    counts as ``error`` (the client got a 422, as for any ``RequestError`` of the engine), not as
    ``ok``, whose latency percentiles would take in a request that produced nothing."""
    outcomes: list[str] = []

    def silent(engine: object, job: Job) -> None:
        job.emit(np.zeros(0, dtype=np.float32))

    async def scenario() -> None:
        worker = EngineWorker(lambda: object(), queue_size=1)
        worker.start()
        await until(lambda: worker.state == "ready", "the worker ready")
        stats = RequestStats(received_at=0.0, sample_rate=44_100, seed=0)
        stream = SynthesisStream(worker.submit(silent), stats, lambda _, o: outcomes.append(o))
        with pytest.raises(RequestError, match="produced no audio"):
            await stream.begin()
        worker.stop()

    asyncio.run(scenario())
    assert outcomes == ["error"]
