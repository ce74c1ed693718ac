"""The request-facing service: validate and resolve a speech request or a new voice, then hand the
engine work to the worker. Route handlers call this and only shape responses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
import time

import anyio
import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from engine.audio_io import SAMPLE_RATE, decode_audio
from engine.engine import OptimizedFishSpeech
from engine.text import SpokenForm
from engine.text.sentences import check_text, split_text
from serving.errors import InvalidInput, PayloadTooLarge, QueueFull
from serving.schemas import SEED_MAX, VoiceInfo
from serving.services.asr import Transcriber
from serving.services.captions import WordTime, align_words
from serving.services.metrics import MetricsStore
from serving.services.synthesis import SynthesisSpec, SynthesisStream, start_synthesis
from serving.services.voices import Voice, VoiceLibrary, check_voice_id
from serving.services.worker import EngineWorker
from serving.settings import Settings

log = logging.getLogger(__name__)

# Names stock OpenAI clients send; unless a saved voice has the name they mean "no reference".
UNCONDITIONED_VOICES = frozenset(
    {"default", "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova"}
    | {"sage", "shimmer", "verse", "marin", "cedar"}
)
_READ_BLOCK = 1 << 20


class SpeechService:
    """Turns validated requests into worker jobs; owns no engine state itself."""

    def __init__(
        self,
        settings: Settings,
        worker: EngineWorker[OptimizedFishSpeech],
        voices: VoiceLibrary,
        metrics: MetricsStore,
        transcriber: Transcriber,
        spoken_form: SpokenForm,
        synthetic: bool = False,
    ) -> None:
        self.settings = settings
        self.spoken_form = spoken_form
        self.synthetic = synthetic
        self.worker = worker
        self.voices = voices
        self.metrics = metrics
        self.transcriber = transcriber
        self._decoding = asyncio.Semaphore(settings.decode_concurrency)
        # The grammars run one call at a time anyway; requests wait their turn here, not in a
        # thread of the shared pool.
        self._normalizing = anyio.CapacityLimiter(1)

    async def read_reference(self, upload: UploadFile | None) -> np.ndarray | None:
        """An uploaded recording, size- and duration-checked, as mono float32 at 44.1 kHz.

        An empty part without a file name (a browser form with no file chosen) counts as none.
        Reading and decoding hold the upload and its samples in memory, so at most
        ``decode_concurrency`` of them run at once; the rest wait here, before the queue.
        """
        if upload is None or (not upload.filename and not upload.size):
            return None
        limit = self.settings.max_upload_bytes
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLarge(
                f"upload is {upload.size} bytes; the limit is {limit} (MAX_UPLOAD_MB)"
            )
        async with self._decoding:
            data = await self._read_upload(upload, limit)
            return await run_in_threadpool(
                decode_audio, data, max_seconds=self.settings.max_reference_seconds
            )

    @staticmethod
    async def _read_upload(upload: UploadFile, limit: int) -> bytes:
        data = bytearray()
        while block := await upload.read(_READ_BLOCK):
            data += block
            if len(data) > limit:
                raise PayloadTooLarge(f"upload exceeds {limit} bytes (MAX_UPLOAD_MB)")
        return bytes(data)

    def resolve_voice(self, voice_id: str | None) -> Voice | None:
        """A saved voice, or None for the unconditioned voice; unknown ids are a 404."""
        if not voice_id or (
            voice_id.lower() in UNCONDITIONED_VOICES and not self.voices.exists(voice_id)
        ):
            return None
        return self.voices.get(check_voice_id(voice_id))

    def normalizes(self, normalize: bool | None) -> bool:
        """A request's ``normalize``, or the server's NORMALIZE when it sent none."""
        return self.settings.normalize if normalize is None else normalize

    async def spoken(self, text: str, normalize: bool | None, voice: Voice | None) -> str:
        """What the engine will be asked to say: normalised unless ``normalize`` (else the
        server's NORMALIZE) says not, then the global and the voice's pronunciations applied.

        Off the event loop (the grammars take milliseconds a character, and their first use
        loads them), within NORMALIZE_BUDGET_S (the text left when it runs out is spoken as
        written), and stopped at the next span when the caller is cancelled: a client that
        leaves frees the normaliser.
        """
        stopped = threading.Event()
        work = functools.partial(
            self.spoken_form,
            check_text(text, self.settings.max_text_chars, "MAX_TEXT_CHARS"),
            normalize=self.normalizes(normalize),
            voice=voice.pronunciations if voice else None,
            stop=stopped.is_set,
            budget_s=self.settings.normalize_budget_s,
        )
        try:
            return await anyio.to_thread.run_sync(
                work, abandon_on_cancel=True, limiter=self._normalizing
            )
        except asyncio.CancelledError:
            stopped.set()
            raise

    async def speak(
        self,
        text: str,
        *,
        temperature: float,
        top_p: float,
        voice: Voice | None = None,
        reference: np.ndarray | None = None,
        reference_text: str | None = None,
        seed: int | None = None,
        speed: float = 1.0,
        normalize: bool | None = None,
        chunked_decode: bool = False,
        low_memory: bool = False,
        route: str = "tts",
    ) -> SynthesisStream:
        """Put the text in spoken form, split it, queue the request, wait for its first audio."""
        received_at = time.perf_counter()
        try:
            spoken = await self.spoken(text, normalize, voice)
        except asyncio.CancelledError:
            self.metrics.cancel(route)
            raise
        chunks = split_text(spoken, self.settings.text_chunk_chars)
        if not chunks:
            raise InvalidInput("text has nothing to speak")
        if voice is not None and reference is not None:
            raise InvalidInput("send either voice_id or speaker_file, not both")
        spec = SynthesisSpec(
            chunks=chunks,
            seed=secrets.randbelow(SEED_MAX) if seed is None else seed,
            reference_audio=voice.audio if voice else reference,
            reference_text=voice.info.transcript if voice else reference_text,
            reference_codes=voice.codes if voice else None,
            temperature=temperature,
            top_p=top_p,
            speed=speed,
            chunked_decode=chunked_decode or low_memory,
            release_memory=low_memory,
            max_new_tokens=self.settings.max_new_tokens,
            route=route,
        )
        try:
            return await start_synthesis(self.worker, spec, received_at, self.metrics.record)
        except QueueFull:
            self.metrics.reject(route)
            raise

    async def caption(self, text: str, audio: np.ndarray) -> tuple[list[WordTime], str]:
        """When each word of ``text`` is said in ``audio`` (the returned audio), and how that was
        found; none on synthetic weights, whose audio is noise that nothing could align."""
        if self.synthetic:
            return [], "unavailable: synthetic checkpoint (the audio is noise)"
        heard = await run_in_threadpool(self.transcriber.words, audio, SAMPLE_RATE)
        words = align_words(text, heard, len(audio) / SAMPLE_RATE)
        return words, "faster-whisper tiny.en word timestamps, matched to the requested words"

    async def add_voice(
        self, voice_id: str, upload: UploadFile, transcript: str | None, name: str | None
    ) -> VoiceInfo:
        """Check, transcribe if needed, encode on the worker, then save atomically."""
        self.voices.ensure_new(voice_id)  # early; re-checked under the library lock on save
        audio = await self.read_reference(upload)
        if audio is None:
            raise InvalidInput("audio is required: a reference recording of the voice")
        source = "user"
        if not (transcript or "").strip():
            transcript = await run_in_threadpool(self.transcriber.transcribe, audio, SAMPLE_RATE)
            source = "asr"
            log.info("transcribed voice %s: %r", voice_id, transcript)
        job = self.worker.submit(lambda engine, _job: engine.reference_codes(audio)[0])
        codes = await job.wait()
        return await run_in_threadpool(
            self.voices.create, voice_id, name, transcript.strip(), source, audio, codes
        )
