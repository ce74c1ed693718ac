"""Semantic generation: prefill, then one whole frame per call: slow step, ten fast steps, sampling.

The per-frame step touches only preallocated state (KV caches, the repetition window, sampling
settings held as device tensors), so it can be compiled fullgraph and captured as a CUDA graph.
Each request attends over the smallest KV length bucket (256 x 2^k) that holds its prompt and
frames; the step is compiled once per bucket, lazily, and reused. End of speech is read back on
the host only at block boundaries: after ``first_block`` frames, then every ``eos_check_interval``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import torch
from fish_speech.models.text2semantic.llama import DualARTransformer
from fish_speech.tokenizer import IM_END_TOKEN
from torch import Tensor, nn

from engine import dual_ar
from engine.caches import PrefixKVCache
from engine.errors import RequestError
from engine.profile import EngineProfile, kv_bucket
from engine.sampling import DEFAULT_SAMPLING, REPETITION_WINDOW, SamplingParams, sample
from engine.telemetry import SynthesisReport

log = logging.getLogger(__name__)

# A prompt length no request has (a real one holds at least its chat markers), > 1 so the dynamic
# prefill graph is not specialised to a single token.
PREFILL_WARMUP_TOKENS = 3


def block_due(produced: int, emitted: int, interval: int, first: int, budget: int) -> bool:
    """Whether the frames made since the last block end one: the first block after ``first``
    frames, then every ``interval``, and whatever is left at the budget."""
    due = produced - emitted == interval or (emitted == 0 and produced == first)
    return due or produced == budget


def speech_end(block: Tensor, im_end: int) -> int | None:
    """The index of a block's first end-of-speech frame (a host read-back), None if none."""
    ends = (block[0] == im_end).nonzero()
    return int(ends[0, 0]) if ends.numel() else None


class SemanticDecoder(nn.Module):
    """Generates frames of 1 token + ``num_codebooks`` codes from a prompt [1 + C, T]."""

    def __init__(
        self,
        model: DualARTransformer,
        profile: EngineProfile,
        semantic_size: int,
        residual_size: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.profile = profile
        cfg, tok = model.config, model.tokenizer
        self.num_codebooks = cfg.num_codebooks
        self.semantic_size = semantic_size
        self.residual_size = residual_size
        self.semantic_begin = tok.semantic_begin_id
        self.im_end = tok.get_token_id(IM_END_TOKEN)
        device = next(model.parameters()).device
        dtype = model.norm.weight.dtype
        head = model.embeddings.weight if cfg.tie_word_embeddings else model.output.weight
        rows = torch.cat(
            [
                torch.arange(
                    self.semantic_begin, self.semantic_begin + semantic_size, device=device
                ),
                torch.tensor([self.im_end], device=device),
            ]
        )
        self.register_buffer("slow_head", head.detach()[rows].clone().to(dtype), persistent=False)
        self.register_buffer(
            "fast_head",
            model.fast_output.weight.detach()[:residual_size].clone().to(dtype),
            persistent=False,
        )
        # The sliced copies above are the only heads used: the full ones (the slow one is
        # 155,776 x 1,024, 319 MB in bf16) would sit in device memory unread.
        if not cfg.tie_word_embeddings:
            del model.output
        del model.fast_output
        self.register_buffer("settings", DEFAULT_SAMPLING.as_tensor(device))
        self.register_buffer("eos_bias", torch.zeros((), device=device))
        self.register_buffer(
            "window",
            torch.zeros(self.num_codebooks, REPETITION_WINDOW, dtype=torch.long, device=device),
        )
        self.register_buffer(
            "fast_pos", torch.arange(self.num_codebooks, device=device), persistent=False
        )
        with torch.device(device):
            model.setup_caches(1, min(profile.max_seq_len, cfg.max_seq_len), dtype=dtype)
        self.max_seq_len = model.max_seq_len
        self.prefix_cache = PrefixKVCache(profile.prefix_cache_mb * 2**20)
        self._step: Callable[[Tensor, Tensor, int], Tensor] = self.decode_step
        self._prefill: Callable[[Tensor, Tensor, int], Tensor] = self.prefill

    def compile(self) -> None:
        """Compile the frame step (one graph per KV bucket, static) and prefill (dynamic)."""
        p = self.profile
        if p.compile_decode != "none":
            mode = None if p.compile_decode == "default" else p.compile_decode
            # Buckets are few (at most 6) and each must be its own static graph: never dynamic.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
            self._step = torch.compile(
                self.decode_step, mode=mode, fullgraph=p.fullgraph, dynamic=False
            )
        if p.compile_prefill:
            self._prefill = torch.compile(self.prefill, dynamic=True, fullgraph=p.fullgraph)

    def _sample_frame(self, hidden: Tensor) -> Tensor:
        """Slow head + ten fast steps on the last slow hidden state -> next frame [1 + C, 1]."""
        model = self.model
        temperature, top_p, penalty = self.settings[0], self.settings[1], self.settings[2]
        logits = torch.nn.functional.linear(model.norm(hidden), self.slow_head)[0, -1]
        logits = torch.cat([logits[:-1], logits[-1:] + self.eos_bias])
        idx = sample(logits, self.window[0], temperature, top_p, penalty)
        is_end = idx == self.semantic_size
        token = torch.where(is_end, self.im_end, idx + self.semantic_begin)
        code = torch.where(is_end, 0, idx)
        codes = [code]
        dual_ar.fast_step(model, model.fast_project_in(hidden), self.fast_pos[:1])
        x = model.fast_embeddings(code)
        for i in range(1, self.num_codebooks):
            h = dual_ar.fast_step(model, x, self.fast_pos[i : i + 1])
            logits = torch.nn.functional.linear(h, self.fast_head)[0, -1]
            code = sample(logits, self.window[i], temperature, top_p, penalty)
            x = model.fast_embeddings(code)
            codes.append(code)
        frame_codes = torch.cat(codes)
        self.window.copy_(torch.cat([self.window[:, 1:], frame_codes[:, None]], dim=1))
        return torch.cat([token, frame_codes])[:, None]

    def prefill(self, prompt: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
        hidden = dual_ar.slow_hidden(self.model, prompt[None], input_pos, kv_len)
        return self._sample_frame(hidden)

    def decode_step(self, frame: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
        hidden = dual_ar.slow_hidden(self.model, frame[None], input_pos, kv_len)
        return self._sample_frame(hidden)

    @torch.inference_mode()
    def warm_bucket(self, bucket: int, steps: int = 3) -> None:
        """Run prefill once and the frame step ``steps`` times at ``bucket``, so their graphs are
        compiled (and, under reduce-overhead, recorded as CUDA graphs) before a request needs
        them: the prefill graph is dynamic in the prompt's length, not in the bucket's.

        It writes K/V at the first positions only; every request clears and prefills those
        before reading.
        """
        device = self.slow_head.device
        prompt = torch.zeros(1 + self.num_codebooks, PREFILL_WARMUP_TOKENS, dtype=torch.long)
        prompt[0] = self.semantic_begin
        prompt = prompt.to(device)
        self._reset(DEFAULT_SAMPLING, allow_end=False)
        positions = torch.arange(PREFILL_WARMUP_TOKENS, device=device)
        frame = self._prefill(prompt, positions, bucket).clone()
        input_pos = torch.tensor([PREFILL_WARMUP_TOKENS], device=device)
        for _ in range(steps):
            frame.copy_(self._step(frame, input_pos, bucket))
            input_pos += 1

    def _reset(self, params: SamplingParams, allow_end: bool) -> None:
        self.settings.copy_(params.as_tensor())
        self.eos_bias.fill_(0.0 if allow_end else -float("inf"))
        self.window.zero_()
        if params.seed is not None:
            torch.manual_seed(params.seed)

    def frame_budget(self, prompt_len: int, max_new_tokens: int, fixed_frames: int | None) -> int:
        """Frames this request may generate: clamped to the cache with a warning, never refused
        unless the prompt alone does not fit (or an exact ``fixed_frames`` count cannot)."""
        room = self.max_seq_len - prompt_len
        if room < 1:
            raise RequestError(
                f"the prompt ({prompt_len} tokens) does not fit max_seq_len {self.max_seq_len}; "
                "shorten the text or the reference, or raise MAX_SEQ_LEN"
            )
        if fixed_frames is not None:
            if fixed_frames > room:
                raise RequestError(
                    f"prompt ({prompt_len} tokens) + {fixed_frames} fixed frames exceeds "
                    f"max_seq_len {self.max_seq_len}"
                )
            return fixed_frames
        if max_new_tokens > room:
            log.warning(
                "max_new_tokens %d -> %d: the prompt (%d tokens) leaves only that much of "
                "max_seq_len %d",
                max_new_tokens,
                room,
                prompt_len,
                self.max_seq_len,
            )
            return room
        return max_new_tokens

    def _slow_caches(self) -> list:
        return [layer.attention.kv_cache for layer in self.model.layers]

    def _prefix_key(self, prompt: Tensor, prefix_len: int) -> str | None:
        """The prefix cache key of a host ``prompt``'s voice prefix, None when none applies."""
        usable = 0 < prefix_len < prompt.shape[1] and self.prefix_cache.limit_bytes > 0
        return PrefixKVCache.key_for(prompt[:, :prefix_len]) if usable else None

    def _restore_prefix(self, key: str | None, prefix_len: int) -> bool:
        """Copy a saved voice prefix's K/V into the cache; whether there was one."""
        state = self.prefix_cache.get(key) if key else None
        if state is None:
            return False
        for cache, (k, v) in zip(self._slow_caches(), state, strict=True):
            cache.k_cache[:, :, :prefix_len].copy_(k)
            cache.v_cache[:, :, :prefix_len].copy_(v)
        return True

    def _save_prefix(self, key: str, prefix_len: int) -> None:
        state = [
            (c.k_cache[:, :, :prefix_len].clone(), c.v_cache[:, :, :prefix_len].clone())
            for c in self._slow_caches()
        ]
        if not all(bool(torch.isfinite(k).all() & torch.isfinite(v).all()) for k, v in state):
            log.warning("voice prefix K/V is not finite (an overflow in prefill): not saved")
            return
        self.prefix_cache.put(key, state)

    def _clear_stale(self, start: int, end: int) -> None:
        """Zero the K/V an earlier request left in positions [start, end) of the slow caches,
        and the whole fast caches, before this request reads them.

        Attention masks those positions, but a masked position still enters as 0 x V (and its
        score as q . K): 0 x NaN is NaN, so one overflow left behind by any request would make
        every later request attending over it garbage until restart. Positions below ``start``
        hold this request's own voice prefix; writing zeros costs one pass over the bucket's K/V.
        """
        for cache in self._slow_caches():
            cache.k_cache[:, :, start:end].zero_()
            cache.v_cache[:, :, start:end].zero_()
        for layer in self.model.fast_layers:
            layer.attention.kv_cache.k_cache.zero_()
            layer.attention.kv_cache.v_cache.zero_()

    @torch.inference_mode()
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
        """Yield generated codes [C, n]: ``first_block`` frames first, then blocks of at most
        ``eos_check_interval`` frames.

        ``prefix_len`` leading prompt tokens (a voice's reference) may be restored from, or saved
        to, the prefix K/V cache. ``report`` gets the prefill and decode times, the frames, the KV
        bucket and whether the prefix was cached; its ``decode_s`` counts only time spent in
        here, not while the consumer holds a block (a streaming caller decodes audio then).
        """
        report = report if report is not None else SynthesisReport()
        prompt_len = prompt.shape[1]
        budget = self.frame_budget(prompt_len, max_new_tokens, fixed_frames)
        bucket = kv_bucket(prompt_len + budget, self.max_seq_len)
        report.kv_bucket = bucket
        self._reset(params, allow_end=fixed_frames is None)
        device = self.slow_head.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        frames = torch.empty(1 + self.num_codebooks, budget, dtype=torch.long, device=device)
        key = self._prefix_key(prompt, prefix_len)
        prompt = prompt.to(device)
        t0 = time.perf_counter()
        report.prefix_cache_hit = self._restore_prefix(key, prefix_len)
        start = prefix_len if report.prefix_cache_hit else 0
        self._clear_stale(start, bucket)
        positions = torch.arange(start, prompt_len, device=device)
        frames[:, :1] = self._prefill(prompt[:, start:].contiguous(), positions, bucket)
        if key and not report.prefix_cache_hit:
            self._save_prefix(key, prefix_len)
        sync()
        report.prefill_s = time.perf_counter() - t0
        produced, emitted = 1, 0
        # Contiguous, same shape and strides every request: no recompiles.
        current = frames[:, :1].clone()
        input_pos = torch.tensor([prompt_len], device=device)
        interval = self.profile.eos_check_interval
        first = min(first_block or interval, budget)
        report.decode_s = 0.0
        t1 = time.perf_counter()
        while True:
            if block_due(produced, emitted, interval, first, budget):
                block = frames[:, emitted:produced]
                cut = speech_end(block, self.im_end)
                if cut is not None:
                    if cut:
                        report.decode_s += time.perf_counter() - t1
                        yield block[1:, :cut]
                        t1 = time.perf_counter()
                    produced = emitted + cut
                    break
                report.decode_s += time.perf_counter() - t1
                yield block[1:]
                t1 = time.perf_counter()
                emitted = produced
                if produced == budget:
                    break
            # Copy the step's output out at once: a CUDA-graph replay reuses its output memory.
            current.copy_(self._step(current, input_pos, bucket))
            frames[:, produced : produced + 1].copy_(current)
            produced += 1
            input_pos += 1
        sync()
        report.decode_s += time.perf_counter() - t1
        report.frames = produced
