"""OptimizedFishSpeech: text + reference -> codes -> audio under an optimization profile."""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, Unpack

import numpy as np
import torch
from fish_speech.content_sequence import ContentSequence, TextPart, VQPart

from engine.audio_io import SAMPLE_RATE, ReferenceAudio, load_reference
from engine.batching import BatchScheduler
from engine.caches import LRUCache, ReferenceCodeCache
from engine.codec import CodecRunner
from engine.compile_cache import configure_compilation
from engine.errors import GenerationCancelled
from engine.generation import SemanticDecoder
from engine.measure import perf_model
from engine.measure.perf_model import FrameBytes
from engine.model.checkpoint import CheckpointFolder
from engine.model.quantize import apply_quantization
from engine.model.upstream import load_codec, load_dual_ar
from engine.profile import EngineProfile, Fallback, Hardware, resolve_profile, torch_dtype
from engine.sampling import GenerateOptions, SamplingParams, read_options
from engine.telemetry import Measure, SynthesisReport
from engine.text.sentences import check_text

log = logging.getLogger(__name__)

T = TypeVar("T")
StopCheck = Callable[[], bool]
"""Asked between generated blocks; True stops the request (``GenerationCancelled``)."""

MAX_TEXT_CHARS = 2000


def one_core_thread(name: str) -> ThreadPoolExecutor:
    """A single worker thread whose torch ops run on one core, every other thread's setting
    left as it was.

    ``torch.set_num_threads`` sets the calling thread's OpenMP team size and also the count a
    thread takes when it first asks for one: so the worker first takes the process's count (a
    later ``set_num_threads`` elsewhere would otherwise reach it then), sets 1 for itself, and
    this thread sets its own count again, which puts the process-wide one back.
    """
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(1, name)
    pool.submit(_one_thread).result()
    torch.set_num_threads(threads)
    return pool


def _one_thread() -> None:
    torch.get_num_threads()
    torch.set_num_threads(1)


class OptimizedFishSpeech:
    """The S1-mini pipeline on the upstream classes, with every knob read from one profile."""

    def __init__(
        self,
        checkpoint: CheckpointFolder,
        profile: EngineProfile,
        hardware: Hardware,
        fallbacks: list[Fallback],
        reference_cache_dir: Path | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.hardware = hardware
        self.fallbacks = list(fallbacks)
        self.device = torch.device(hardware.device)
        self.dtype = torch_dtype(profile)
        if self.device.type == "cuda":
            configure_cuda_math(profile)
        model = load_dual_ar(checkpoint, self.device, self.dtype, profile.max_seq_len)
        codec = load_codec(checkpoint, self.device, self.dtype)
        apply_quantization(
            model,
            profile.quantization,
            self.device,
            profile.int4_group_size,
            profile.int8_kernel,
        )
        self.codec = CodecRunner(codec, profile)
        self.decoder = SemanticDecoder(
            model, profile, self.codec.semantic_size, self.codec.residual_size
        )
        self.batcher = (
            BatchScheduler(self.decoder, profile.max_batch) if profile.max_batch > 1 else None
        )
        if self.device.type == "cuda":
            # Quantization and the dropped full heads freed float weights: hand their cached
            # blocks back, so reserved memory is what the engine holds.
            torch.cuda.empty_cache()
        self.tokenizer = model.tokenizer
        self._profile = profile
        self.reference_cache = ReferenceCodeCache(profile.cache_limit, reference_cache_dir)
        self.semantic_cache: LRUCache[torch.Tensor] = LRUCache(profile.cache_limit)
        # Batched engines are called from several threads: each reads its own last report, and
        # the caches and the codec (which parks its encoder between calls) take one at a time.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._codec_lock = threading.Lock()
        self._codec_pool = one_core_thread("codec") if profile.codec_thread else None
        self.compile_seconds: float | None = None
        self.frames_generated = 0  # lifetime count of frames the decoder made (not cache hits)
        self.compile_cache: Path | None = None
        if profile.compiled:
            self.compile_cache = configure_compilation(
                profile, checkpoint.file("config.json"), hardware.name
            )
            (self.batcher or self.decoder).compile()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        profile: EngineProfile | None = None,
        reference_cache_dir: Path | None = None,
    ) -> OptimizedFishSpeech:
        """Load a checkpoint strictly and prepare it under ``profile`` (env overrides if None)."""
        requested = profile if profile is not None else EngineProfile.from_env()
        checkpoint = CheckpointFolder.open(path)
        hardware = Hardware.detect(
            requested.device, probe_bitsandbytes=requested.quantization == "nf4"
        )
        active, notes = resolve_profile(requested, hardware, checkpoint.config.get("max_seq_len"))
        _warn_on_foreign_provenance(requested, checkpoint, hardware)
        if active.max_batch > 1 and hardware.device == "cpu":
            return _on_a_passing_thread(
                lambda: cls(checkpoint, active, hardware, notes, reference_cache_dir)
            )
        return cls(checkpoint, active, hardware, notes, reference_cache_dir)

    @property
    def last_report(self) -> SynthesisReport:
        """The report of this thread's last ``synthesize`` / ``synthesize_stream``."""
        return getattr(self._local, "report", None) or SynthesisReport()

    @last_report.setter
    def last_report(self, report: SynthesisReport) -> None:
        self._local.report = report

    @property
    def max_batch(self) -> int:
        """Requests this engine decodes together (callers beyond it wait for a slot)."""
        return self._profile.max_batch

    def close(self) -> None:
        """Stop the batch scheduler's thread and the codec's, if there are."""
        if self.batcher is not None:
            self.batcher.close()
        if self._codec_pool is not None:
            self._codec_pool.shutdown()

    @property
    def active_profile(self) -> EngineProfile:
        """The profile that actually runs, after hardware fallbacks."""
        return self._profile

    def frame_bytes(self, kv_len: int | None = None) -> FrameBytes:
        """Bytes one frame reads (perf model) at ``kv_len`` (default: the last request's bucket)."""
        dec = self.decoder
        return perf_model.ours(
            dec.model.config,
            self._profile,
            kv_len or self.last_report.kv_bucket or dec.max_seq_len,
            dec.semantic_size,
            dec.residual_size,
        )

    def resident_bytes(self) -> perf_model.ResidentBytes:
        """What the perf model says the engine keeps in device memory (weights and KV caches)."""
        dec = self.decoder
        return perf_model.resident(
            dec.model.config,
            self._profile,
            dec.max_seq_len,
            dec.semantic_size,
            dec.residual_size,
            perf_model.module_bytes(self.codec.codec, self.device),
        )

    def device_bytes(self) -> int:
        """Bytes of every tensor the engine holds on its device, counted from the tensors."""
        modules = torch.nn.ModuleList([self.decoder, self.codec.codec])
        if self.batcher is not None:
            modules.append(self.batcher.state)
        held = perf_model.module_bytes(modules, self.device)
        if self.batcher is not None:
            held += self.batcher.store.untyped_storage().nbytes()
        return held

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def samples_per_frame(self) -> int:
        return self.codec.samples_per_frame

    def reference_codes(self, reference: ReferenceAudio) -> tuple[torch.Tensor, bool]:
        """VQ codes of a reference recording and whether they came from the cache."""
        if isinstance(reference, np.ndarray):
            raw = np.ascontiguousarray(reference, dtype=np.float32).tobytes()
        elif isinstance(reference, bytes):
            raw = reference
        else:
            raw = Path(reference).read_bytes() if Path(reference).is_file() else b""
        key = ReferenceCodeCache.key_for(raw)
        with self._lock:
            cached = self.reference_cache.get(key)
        if cached is not None:
            return cached, True
        audio = load_reference(reference)
        codes = self._run_codec(lambda: self.codec.encode(audio))
        with self._lock:
            self.reference_cache.put(key, codes)
        return codes, False

    def build_prompt(
        self, text: str, ref_codes: torch.Tensor | None, ref_text: str | None
    ) -> torch.Tensor:
        """The upstream interleaved prompt [1 + C, T]: (reference text + codes), then the text."""
        return self._encode(
            self._reference_part(ref_codes, ref_text) + [check_text(text, MAX_TEXT_CHARS)]
        )

    def voice_prefix_len(
        self, prompt: torch.Tensor, ref_codes: torch.Tensor | None, ref_text: str | None
    ) -> int:
        """How many leading tokens of ``prompt`` are the reference segment alone (0 if none).

        Those tokens, and so their K/V state, are the same for every request with this voice.
        """
        if ref_codes is None:
            return 0
        prefix = self._encode(self._reference_part(ref_codes, ref_text))
        n = prefix.shape[1]
        return n if n < prompt.shape[1] and torch.equal(prompt[:, :n], prefix) else 0

    @staticmethod
    def _reference_part(ref_codes: torch.Tensor | None, ref_text: str | None) -> list:
        if ref_codes is None:
            return []
        return [[TextPart(text=ref_text or ""), VQPart(codes=ref_codes)]]

    def _encode(self, parts: list) -> torch.Tensor:
        seq = ContentSequence(modality="interleave")
        for part in parts:
            if isinstance(part, str):
                seq.append([TextPart(text=part)], add_end=False, speaker=0)
            else:
                seq.append(part, add_end=True, speaker=0)
        encoded, _, _ = seq.encode_for_inference(
            self.tokenizer, num_codebooks=self.decoder.num_codebooks
        )
        return encoded.long()

    def _semantic_key(
        self, prompt: torch.Tensor, params: SamplingParams, frames: int | None, cap: int
    ) -> str:
        digest = hashlib.sha256(prompt.numpy().tobytes()).hexdigest()
        knobs = (
            params.temperature,
            params.top_p,
            params.repetition_penalty,
            params.seed,
            frames,
            cap,
        )
        return ":".join(map(str, (digest, *knobs)))

    def _prepare(
        self,
        text: str,
        reference_audio: ReferenceAudio | None,
        reference_text: str | None,
        report: SynthesisReport,
    ) -> tuple[torch.Tensor, int]:
        """The prompt and the length of its voice prefix."""
        t0 = time.perf_counter()
        ref_codes = None
        if reference_audio is not None:
            ref_codes, report.reference_cache_hit = self.reference_codes(reference_audio)
        report.encode_s = time.perf_counter() - t0
        prompt = self.build_prompt(text, ref_codes, reference_text)
        return prompt, self.voice_prefix_len(prompt, ref_codes, reference_text)

    def iter_codes(
        self,
        prompt: torch.Tensor,
        params: SamplingParams,
        max_new_tokens: int,
        fixed_frames: int | None,
        report: SynthesisReport,
        prefix_len: int = 0,
        first_block: int | None = None,
        should_stop: StopCheck | None = None,
    ) -> Iterator[torch.Tensor]:
        """Generated codes in blocks (device tensors); seeded requests may come from the cache.

        ``should_stop`` is asked after every block (where the host already syncs for
        end-of-speech), so a caller that went away stops generation within one block.
        """
        key = (
            self._semantic_key(prompt, params, fixed_frames, max_new_tokens)
            if params.seed is not None
            else None
        )
        with self._lock:
            cached = self.semantic_cache.get(key) if key else None
        if cached is not None:
            report.semantic_cache_hit = True
            report.frames = cached.shape[1]
            yield cached.to(self.device)
            return
        blocks = []
        generate = self.batcher.generate if self.batcher is not None else self.decoder.generate
        for block in generate(
            prompt,
            params,
            max_new_tokens,
            fixed_frames,
            report,
            prefix_len=prefix_len,
            first_block=first_block,
        ):
            with self._lock:
                self.frames_generated += block.shape[1]
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"stopped after {sum(b.shape[1] for b in blocks)} frames")
            blocks.append(block)
            yield block
        if key and blocks:
            with self._lock:
                self.semantic_cache.put(key, torch.cat(blocks, dim=1).cpu())

    @torch.inference_mode()
    def synthesize(
        self,
        text: str,
        reference_audio: ReferenceAudio | None = None,
        reference_text: str | None = None,
        *,
        should_stop: StopCheck | None = None,
        **options: Unpack[GenerateOptions],
    ) -> np.ndarray:
        """Generate all frames, decode once; float32 mono audio at 44.1 kHz.

        ``options`` are ``GenerateOptions``; ``should_stop`` is asked between blocks (see
        ``iter_codes``).
        """
        params, max_new_tokens, fixed_frames = read_options(options)
        report = SynthesisReport()
        with Measure(self.device, report) as measure:
            prompt, prefix_len = self._prepare(text, reference_audio, reference_text, report)
            blocks = list(
                self.iter_codes(
                    prompt,
                    params,
                    max_new_tokens,
                    fixed_frames,
                    report,
                    prefix_len,
                    should_stop=should_stop,
                )
            )
            t0 = time.perf_counter()
            audio = (
                self._run_codec(lambda: self.codec.decode(torch.cat(blocks, dim=1)))
                if blocks
                else np.zeros(0, np.float32)
            )
            report.codec_s = time.perf_counter() - t0
            report.ttfa_s = time.perf_counter() - measure.start
        report.audio_s = len(audio) / SAMPLE_RATE
        self.last_report = report
        return audio

    def synthesize_stream(
        self,
        text: str,
        reference_audio: ReferenceAudio | None = None,
        reference_text: str | None = None,
        *,
        should_stop: StopCheck | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Iterator[np.ndarray]:
        """Yield audio chunks while later frames are still generated: the first chunk of
        ``first_chunk_size`` frames as soon as those frames exist, then ``chunk_size`` frames each.

        With ``num_streams >= 2`` on CUDA each chunk is decoded on a side stream, overlapped with
        generation of the next frames; the main stream's event orders it after its codes.
        ``should_stop`` works as in ``synthesize``.
        """
        params, max_new_tokens, fixed_frames = read_options(options)
        report = SynthesisReport()
        first, chunk = self._profile.first_chunk_size, self._profile.chunk_size
        side = (
            torch.cuda.Stream(self.device)
            if self._profile.num_streams >= 2 and self.device.type == "cuda"
            else None
        )
        with Measure(self.device, report) as measure, torch.inference_mode():
            prompt, prefix_len = self._prepare(text, reference_audio, reference_text, report)
            codes = torch.empty(self.decoder.num_codebooks, 0, dtype=torch.long, device=self.device)
            emitted, pending, spent = 0, deque(), []
            decode = self.codec.open_stream()
            blocks = self.iter_codes(
                prompt, params, max_new_tokens, fixed_frames, report, prefix_len, first, should_stop
            )
            for block in itertools.chain(blocks, [None]):
                done = block is None
                if not done:
                    codes = torch.cat([codes, block], dim=1)
                available = codes.shape[1]
                while True:
                    size = first if emitted == 0 else chunk
                    if available - emitted < size and not (done and emitted < available):
                        break
                    end = min(emitted + size, available)
                    pending.append(self._launch_decode(decode, codes, emitted, end, side, spent))
                    emitted = end
                    yield from self._ready(pending, False, report, measure.start)
                yield from self._ready(pending, done, report, measure.start)
            report.codec_s = sum(spent)
        self.last_report = report

    def _ready(
        self, pending: deque, wait: bool, report: SynthesisReport, start: float
    ) -> Iterator[np.ndarray]:
        """Decoded chunks in order, those already finished or all of them when ``wait``, counted
        into ``report`` (the first one sets the time to first audio, the last one the stream's
        end)."""
        while pending and (wait or self._decoded(pending[0][0])):
            audio = self._finish_decode(pending.popleft())
            report.last_chunk_s = time.perf_counter() - start
            if report.ttfa_s is None:
                report.ttfa_s = report.last_chunk_s
                report.first_chunk_audio_s = len(audio) / SAMPLE_RATE
            report.audio_s += len(audio) / SAMPLE_RATE
            yield audio

    def _run_codec(self, fn: Callable[[], T]) -> T:
        """Run one codec call; calls take turns (the codec parks its encoder between calls).

        A batched engine's callers each run their own chunks' codec on their own threads while
        the scheduler's thread steps on. Measured on 2 cores, full size, 4 requests: that
        streams 7.2 frames/s in aggregate, where running every codec call on the scheduler's
        thread, between steps, streams 6.6 (docs/results/2026-12-07-continuous-batching.md).
        """
        with self._codec_lock:
            return fn()

    def _launch_decode(
        self,
        decode: Callable[[torch.Tensor, int, int], torch.Tensor],
        codes: torch.Tensor,
        start: int,
        end: int,
        side: torch.cuda.Stream | None,
        spent: list[float],
    ):
        """Start decoding frames [start, end) to audio: inline, on the codec thread
        (``codec_thread``) or on a CUDA side stream; the seconds it takes (to launch, on CUDA)
        go into ``spent``. The first chunk is decoded inline on every core even with the codec
        thread: nothing is generated while a listener waits for it (measured, full size: first
        audio 1.78 s with it on the one-core thread, 0.98 s without the thread)."""
        if side is None:

            def job() -> np.ndarray:
                began = time.perf_counter()
                audio = self._run_codec(lambda: decode(codes, start, end).float().cpu().numpy())
                spent.append(time.perf_counter() - began)
                return audio

            if self._codec_pool is not None and start > 0:
                return self._codec_pool.submit(job), None
            return None, job()
        t0 = time.perf_counter()
        side.wait_stream(torch.cuda.current_stream(self.device))
        codes.record_stream(side)
        with torch.cuda.stream(side), self._codec_lock:
            audio = decode(codes, start, end).float()
            host = torch.empty(audio.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(audio, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        spent.append(time.perf_counter() - t0)
        return done, host

    @staticmethod
    def _finish_decode(item) -> np.ndarray:
        done, audio = item
        if done is None:
            return audio
        if isinstance(done, Future):
            return done.result()
        done.synchronize()
        return audio.numpy()

    @staticmethod
    def _decoded(done: Future | torch.cuda.Event | None) -> bool:
        """Whether a launched chunk's audio is ready (inline decodes always are)."""
        if done is None:
            return True
        return done.done() if isinstance(done, Future) else done.query()

    def warmup(
        self,
        text: str = "Warming up the engine.",
        frames: int | None = None,
        buckets: Sequence[int] | None = None,
    ) -> float:
        """Run compile / graph capture once (and once more for steady state); return seconds.

        A compiled frame step is one graph per KV bucket, so the step is also built for every
        bucket of ``buckets`` (default: the profile's ``buckets_to_warm``, all a request can
        reach): from the compile cache that is seconds, where a first request needing a new
        bucket would stall on it. A caller whose own requests are known (a sweep trial, which
        runs its scenario untimed first) passes ``buckets=()`` and pays only for those.
        """
        frames = frames or max(2 * self._profile.eos_check_interval, self._profile.chunk_size)
        t0 = time.perf_counter()
        for _ in range(2 if self._profile.compiled else 1):
            list(self.synthesize_stream(text, fixed_frames=frames, seed=0))
            self.synthesize(text, fixed_frames=frames, seed=0)
        if self._profile.compile_decode != "none" or self._profile.compile_prefill:
            warm = self.batcher.warm if self.batcher is not None else self.decoder.warm_bucket
            for bucket in self._profile.buckets_to_warm() if buckets is None else buckets:
                warm(bucket)
        if buckets is None:
            self.codec.warm()
        self.compile_seconds = time.perf_counter() - t0
        self.semantic_cache.clear()
        self.semantic_cache.hits = self.semantic_cache.misses = 0
        return self.compile_seconds


def _on_a_passing_thread(build: Callable[[], T]) -> T:
    """``build()`` on a thread that ends once it returns.

    A batched CPU engine makes its frames on its scheduler's thread. Each
    thread that runs an OpenMP region keeps a team of workers for life, and once the process
    holds more OpenMP threads than cores, libgomp stops spin-waiting between regions: every
    region then wakes its workers through the kernel. Loading the model (a few regions) on the
    caller's thread would leave such a team behind: measured on 2 cores, the tiny checkpoint's
    frame step took 7.6 ms before a second team existed, 17.2 ms after, and 9.6 ms when the
    loading thread had ended.
    """
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(build())
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="engine-load")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def configure_cuda_math(profile: EngineProfile) -> None:
    """TF32 as the profile says, and cuDNN's autotuner off.

    The codec's convolutions are cuDNN's only work here, and their input length changes with
    every request and chunk (whole-file decodes are as long as the speech): with
    ``cudnn.benchmark`` on, every new length re-tunes every convolution inside a request.
    cuDNN's heuristic choice costs no request anything.
    """
    torch.backends.cuda.matmul.allow_tf32 = profile.tf32
    torch.backends.cudnn.allow_tf32 = profile.tf32
    torch.backends.cudnn.benchmark = False


def _warn_on_foreign_provenance(
    profile: EngineProfile, checkpoint: CheckpointFolder, hw: Hardware
) -> None:
    prov = profile.provenance
    if prov is None:
        return
    if prov.checkpoint_hash and prov.checkpoint_hash != checkpoint.content_hash:
        log.warning(
            "profile was made for checkpoint %s, this one is %s",
            prov.checkpoint_hash,
            checkpoint.content_hash,
        )
    if prov.gpu_name and prov.gpu_name != hw.name:
        log.warning("profile was made on %s, this machine has %s", prov.gpu_name, hw.name)
