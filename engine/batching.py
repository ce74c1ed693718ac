"""Continuous batching: up to ``max_batch`` requests decode together, one frame step for all.

A batch-1 frame is memory-bound: every weight is read once per frame. ``SlotStep`` runs the same
upstream modules over B rows at once, so B requests' frames cost one read of the weights. Each
row is a *slot*: its own KV cache row (``attn.slot_cache`` on every layer), position, sampling
settings, repetition window, end-of-speech rule and random stream (its noise is drawn from the
request's own generator, so its samples do not depend on its neighbours).

``BatchScheduler`` owns the slots on one thread. A request joins at the next frame boundary when
a slot is free: its prompt is prefilled on the upstream batch-1 cache (with the voice prefix
cache, as on the batch-1 path), those K/V are copied into its slot row, and the prompt's last
hidden state enters the next step, which samples its first frame beside the others' next ones.
It leaves the moment it ends, runs out of frames, or its consumer goes away; nobody waits for
the slowest. The step runs at the smallest padded batch size (``BATCH_SIZES``) holding the
highest busy slot and at the largest KV bucket any busy slot needs: one static graph per
(batch size, bucket) when compiled, all built by ``warm``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from fish_speech.models.text2semantic.llama import KVCache
from torch import Tensor, nn

from engine import dual_ar
from engine.generation import PREFILL_WARMUP_TOKENS, SemanticDecoder, block_due, speech_end
from engine.profile import batch_size, kv_bucket
from engine.sampling import DEFAULT_SAMPLING, REPETITION_WINDOW, SamplingParams, sample
from engine.telemetry import SynthesisReport

log = logging.getLogger(__name__)


class SlotStep(nn.Module):
    """The per-slot state of a batched decoder and its frame step over the first ``n`` rows."""

    def __init__(self, decoder: SemanticDecoder, rows: int) -> None:
        super().__init__()
        self.decoder = decoder
        model = decoder.model
        cfg = model.config
        device, dtype = decoder.slow_head.device, decoder.slow_head.dtype
        self.rows = rows
        c = decoder.num_codebooks
        with torch.device(device):
            for layer in model.layers:
                layer.attention.slot_cache = KVCache(
                    rows, decoder.max_seq_len, cfg.n_local_heads, cfg.head_dim, dtype
                )
            for layer in model.fast_layers:
                layer.attention.slot_cache = KVCache(
                    rows, c, cfg.fast_n_local_heads, cfg.fast_head_dim, dtype
                )
            self.register_buffer("frames", torch.zeros(rows, 1 + c, 1, dtype=torch.long))
            self.register_buffer("input_pos", torch.zeros(rows, 1, dtype=torch.long))
            self.register_buffer("hidden", torch.zeros(rows, 1, cfg.dim, dtype=dtype))
            self.register_buffer("fresh", torch.zeros(rows, dtype=torch.bool))
            self.register_buffer("settings", DEFAULT_SAMPLING.as_tensor().repeat(rows, 1))
            self.register_buffer("eos_bias", torch.zeros(rows))
            self.register_buffer(
                "window", torch.zeros(rows, c, REPETITION_WINDOW, dtype=torch.long)
            )
            self.register_buffer("noise_slow", torch.ones(rows, decoder.semantic_size + 1))
            self.register_buffer("noise_fast", torch.ones(rows, c - 1, decoder.residual_size))
            self.register_buffer("fast_pos", torch.arange(c).repeat(rows, 1), persistent=False)

    def slot_caches(self, fast: bool = False) -> list[KVCache]:
        layers = self.decoder.model.fast_layers if fast else self.decoder.model.layers
        return [layer.attention.slot_cache for layer in layers]

    def step(self, n: int, kv_len: int) -> Tensor:
        """One frame for rows ``[0, n)``, attending over ``kv_len`` positions -> [n, 1 + C, 1].

        A *fresh* row (its prompt just prefilled) takes the prefill's hidden state instead of
        the slow transformer's output, so its first frame is sampled here; the slow pass it also
        ran wrote K/V at its prompt's end, which its first frame overwrites in the next step.
        """
        model = self.decoder.model
        hidden = dual_ar.slow_hidden(model, self.frames[:n], self.input_pos[:n], kv_len)
        hidden = torch.where(self.fresh[:n, None, None], self.hidden[:n], hidden)
        return self._sample_rows(hidden, n)

    def _sample_rows(self, hidden: Tensor, n: int) -> Tensor:
        dec, model = self.decoder, self.decoder.model
        settings = self.settings[:n]
        temperature, top_p, penalty = settings[:, 0:1], settings[:, 1:2], settings[:, 2:3]
        window = self.window[:n]
        logits = torch.nn.functional.linear(model.norm(hidden), dec.slow_head)[:, -1]
        logits = torch.cat([logits[:, :-1], logits[:, -1:] + self.eos_bias[:n, None]], dim=1)
        idx = sample(logits, window[:, 0], temperature, top_p, penalty, self.noise_slow[:n])
        is_end = idx == dec.semantic_size
        token = torch.where(is_end, dec.im_end, idx + dec.semantic_begin)
        code = torch.where(is_end, 0, idx)
        codes = [code]
        fast_pos = self.fast_pos[:n]
        dual_ar.fast_step(model, model.fast_project_in(hidden), fast_pos[:, 0:1])
        x = model.fast_embeddings(code)
        for i in range(1, dec.num_codebooks):
            h = dual_ar.fast_step(model, x, fast_pos[:, i : i + 1])
            logits = torch.nn.functional.linear(h, dec.fast_head)[:, -1]
            code = sample(
                logits, window[:, i], temperature, top_p, penalty, self.noise_fast[:n, i - 1]
            )
            x = model.fast_embeddings(code)
            codes.append(code)
        frame_codes = torch.cat(codes, dim=1)
        window.copy_(torch.cat([window[:, :, 1:], frame_codes[:, :, None]], dim=2))
        return torch.cat([token, frame_codes], dim=1)[:, :, None]


_END = object()


@dataclass(eq=False)
class SlotRequest:
    """One request's life in the scheduler: what it asked for, and where it is."""

    prompt: Tensor
    params: SamplingParams
    budget: int
    allow_end: bool
    prefix_len: int
    first_block: int
    report: SynthesisReport
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)
    slot: int = -1
    bucket: int = 0
    produced: int = 0
    emitted: int = 0
    steps: int = 0
    busy_sum: int = 0
    started_at: float = 0.0
    generator: torch.Generator | None = None


class BatchScheduler:
    """Decodes up to ``slots`` requests together on its own thread (see the module docstring).

    ``generate`` is called from any thread and yields that request's code blocks as the
    scheduler makes them; the consumer thread runs the codec on them meanwhile.
    """

    def __init__(self, decoder: SemanticDecoder, slots: int) -> None:
        self.decoder = decoder
        self.slots = slots
        self.state = SlotStep(decoder, batch_size(slots))
        self.device = decoder.slow_head.device
        rows, c = self.state.rows, decoder.num_codebooks
        self.store = torch.zeros(rows, 1 + c, decoder.max_seq_len, dtype=torch.long)
        self.store = self.store.to(self.device)
        self._busy: list[SlotRequest | None] = [None] * slots
        self._dirty_to = [0] * slots  # positions [0, n) of a slot's row may hold stale K/V
        self._waiting: queue.Queue[SlotRequest] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue]] = queue.Queue()
        self._wake = threading.Event()
        self._stopped = False
        self._step: Callable[[int, int], Tensor] = self.state.step
        self._prefill: Callable[[Tensor, Tensor, int], Tensor] = self._prefill_hidden
        self.steps_run = 0
        self.busy_rows_run = 0  # sum over steps of requests decoding in that step
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._thread.start()

    def compile(self) -> None:
        """Compile the step (static: one graph per batch size and bucket) and the prefill."""
        p = self.decoder.profile
        if p.compile_decode != "none":
            mode = None if p.compile_decode == "default" else p.compile_decode
            limit = 4 * len(p.buckets_to_warm()) * len(p.batch_sizes())
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            self._step = torch.compile(
                self.state.step, mode=mode, fullgraph=p.fullgraph, dynamic=False
            )
        if p.compile_prefill:
            self._prefill = torch.compile(self._prefill_hidden, dynamic=True, fullgraph=p.fullgraph)

    def _prefill_hidden(self, prompt: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
        return dual_ar.slow_hidden(self.decoder.model, prompt[None], input_pos, kv_len)

    def close(self) -> None:
        """Stop the thread; requests still decoding end with an error."""
        self._stopped = True
        self._wake.set()
        self._thread.join(10.0)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler thread between steps and return its result.

        Warm-up goes through here: CUDA graph trees are per thread, so graphs are recorded on
        the thread that replays them.
        """
        if threading.current_thread() is self._thread:
            return fn()
        done: queue.Queue = queue.Queue(1)
        self._calls.put((fn, done))
        self._wake.set()
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def warm(self, bucket: int, steps: int = 2) -> None:
        """Build the prefill graph and the step's graph at ``bucket`` for every batch size."""
        self.call(lambda: self._warm(bucket, steps))

    @torch.inference_mode()
    def _warm(self, bucket: int, steps: int) -> None:
        if any(self._busy):
            raise RuntimeError("warm-up needs an idle scheduler")
        prompt = torch.zeros(
            1 + self.decoder.num_codebooks, PREFILL_WARMUP_TOKENS, dtype=torch.long
        )
        prompt[0] = self.decoder.semantic_begin
        prompt = prompt.to(self.device)
        positions = torch.arange(PREFILL_WARMUP_TOKENS, device=self.device)
        self.decoder._clear_stale(0, bucket)
        self._prefill(prompt, positions, bucket)
        self.state.input_pos.fill_(PREFILL_WARMUP_TOKENS)
        for n in self.decoder.profile.batch_sizes():
            for _ in range(steps):
                self.state.frames[:n].copy_(self._step(n, bucket))
        self.state.input_pos.zero_()
        for slot in range(self.slots):
            self._clear_slot(slot, 0, self.decoder.max_seq_len)
        self._dirty_to = [0] * self.slots

    def generate(
        self,
        prompt: Tensor,
        params: SamplingParams,
        max_new_tokens: int,
        fixed_frames: int | None = None,
        report: SynthesisReport | None = None,
        *,
        prefix_len: int = 0,
        first_block: int | None = None,
    ) -> Iterator[Tensor]:
        """``SemanticDecoder.generate``'s contract, decoded beside other requests; stopping the
        iteration early frees the slot at the next frame boundary."""
        report = report if report is not None else SynthesisReport()
        budget = self.decoder.frame_budget(prompt.shape[1], max_new_tokens, fixed_frames)
        interval = self.decoder.profile.eos_check_interval
        request = SlotRequest(
            prompt=prompt,
            params=params,
            budget=budget,
            allow_end=fixed_frames is None,
            prefix_len=prefix_len,
            first_block=min(first_block or interval, budget),
            report=report,
        )
        if self._stopped:
            raise RuntimeError("the batch scheduler is closed")
        self._waiting.put(request)
        self._wake.set()
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled.set()
            self._wake.set()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopped:
                self._run_calls()
                self._admit()
                if not any(self._busy):
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._decode_step()
                except Exception as exc:
                    log.exception("batched frame step failed")
                    for slot, request in enumerate(self._busy):
                        if request is not None:
                            self._finish(slot, exc)
        closed = RuntimeError("the batch scheduler was closed")
        for slot, request in enumerate(self._busy):
            if request is not None:
                self._finish(slot, closed)
        while not self._waiting.empty():
            self._waiting.get_nowait().out.put(closed)

    def _run_calls(self) -> None:
        while True:
            try:
                fn, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((True, fn()))
            except Exception as exc:
                done.put((False, exc))

    def _admit(self) -> None:
        """Prefill waiting requests into free slots (lowest first, so the batch stays small)."""
        while None in self._busy:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                return
            if request.cancelled.is_set():
                request.out.put(_END)
                continue
            slot = self._busy.index(None)
            try:
                self._prefill_into(slot, request)
            except Exception as exc:
                request.out.put(exc)
                continue
            self._busy[slot] = request

    def _prefill_into(self, slot: int, request: SlotRequest) -> None:
        dec, state, report = self.decoder, self.state, request.report
        t0 = time.perf_counter()
        report.queue_s = t0 - request.enqueued_at
        prompt_len = request.prompt.shape[1]
        request.bucket = kv_bucket(prompt_len + request.budget, dec.max_seq_len)
        report.kv_bucket = request.bucket
        key = dec._prefix_key(request.prompt, request.prefix_len)
        prompt = request.prompt.to(self.device)
        report.prefix_cache_hit = dec._restore_prefix(key, request.prefix_len)
        start = request.prefix_len if report.prefix_cache_hit else 0
        dec._clear_stale(start, request.bucket)
        positions = torch.arange(start, prompt_len, device=self.device)
        hidden = self._prefill(prompt[:, start:].contiguous(), positions, request.bucket)
        if key and not report.prefix_cache_hit:
            dec._save_prefix(key, request.prefix_len)
        for staging, cache in zip(dec._slow_caches(), state.slot_caches(), strict=True):
            cache.k_cache[slot, :, :prompt_len].copy_(staging.k_cache[0, :, :prompt_len])
            cache.v_cache[slot, :, :prompt_len].copy_(staging.v_cache[0, :, :prompt_len])
        self._clear_slot(slot, prompt_len, self._dirty_to[slot])
        state.hidden[slot].copy_(hidden[0])
        state.fresh[slot] = True
        state.input_pos[slot] = prompt_len
        state.settings[slot].copy_(request.params.as_tensor(self.device))
        state.eos_bias[slot] = 0.0 if request.allow_end else -float("inf")
        state.window[slot].zero_()
        request.generator = torch.Generator(self.device)
        if request.params.seed is None:
            request.generator.seed()
        else:
            request.generator.manual_seed(request.params.seed)
        request.slot = slot
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        report.prefill_s = time.perf_counter() - t0
        request.started_at = time.perf_counter()

    def _clear_slot(self, slot: int, start: int, end: int) -> None:
        """Zero positions [start, end) of a slot's cache row, and its fast cache row.

        Attention masks positions beyond a request's own, but still multiplies them by zero: a
        NaN an earlier occupant left there would poison this request, and its neighbours' longer
        buckets make it read its row that far.
        """
        for cache in self.state.slot_caches():
            cache.k_cache[slot, :, start:end].zero_()
            cache.v_cache[slot, :, start:end].zero_()
        for cache in self.state.slot_caches(fast=True):
            cache.k_cache[slot].zero_()
            cache.v_cache[slot].zero_()

    def _decode_step(self) -> None:
        state = self.state
        busy = [(slot, r) for slot, r in enumerate(self._busy) if r is not None]
        for slot, request in busy:
            if request.cancelled.is_set():
                self._finish(slot, None)
        busy = [(slot, r) for slot, r in busy if self._busy[slot] is not None]
        if not busy:
            return
        n = batch_size(busy[-1][0] + 1)
        kv_len = max(r.bucket for _, r in busy)
        for slot, request in busy:
            state.noise_slow[slot].exponential_(1, generator=request.generator)
            state.noise_fast[slot].exponential_(1, generator=request.generator)
        out = self._step(n, kv_len)
        state.frames[:n].copy_(out)
        for slot, request in busy:
            self.store[slot, :, request.produced].copy_(out[slot, :, 0])
            if request.steps:  # a fresh row's first frame goes at its prompt's end
                state.input_pos[slot] += 1
            request.produced += 1
            request.steps += 1
            request.busy_sum += len(busy)
        state.fresh[:n] = False
        self.steps_run += 1
        self.busy_rows_run += len(busy)
        for slot, request in busy:
            self._maybe_emit(slot, request)

    def _maybe_emit(self, slot: int, request: SlotRequest) -> None:
        """At a block boundary: hand the block over, or end the request at end-of-speech."""
        interval = self.decoder.profile.eos_check_interval
        produced, emitted = request.produced, request.emitted
        if not block_due(produced, emitted, interval, request.first_block, request.budget):
            return
        block = self.store[slot, :, emitted:produced]
        cut = speech_end(block, self.decoder.im_end)
        if cut is not None:
            if cut:
                request.out.put(block[1:, :cut].clone())
            request.produced = emitted + cut
            self._finish(slot, None)
            return
        request.out.put(block[1:].clone())
        request.emitted = produced
        if produced == request.budget:
            self._finish(slot, None)

    def _finish(self, slot: int, error: BaseException | None) -> None:
        request = self._busy[slot]
        if request is None:
            return
        self._busy[slot] = None
        report = request.report
        report.decode_s = time.perf_counter() - request.started_at
        report.frames = request.produced
        report.batch_occupancy = request.busy_sum / request.steps if request.steps else 1.0
        request.out.put(error if error is not None else _END)
        self._dirty_to[slot] = request.prompt.shape[1] + request.steps + 1
        self.state.input_pos[slot] = 0

    @property
    def occupancy(self) -> float | None:
        """Mean requests per frame step since start (None before the first step)."""
        return self.busy_rows_run / self.steps_run if self.steps_run else None
