"""The baseline: what upstream fish-speech 0.1.0 gives a user today for the same inputs.

Upstream's own ``init_model`` (eager, or its ``--compile`` path), its ``generate()`` loop and its
codec decode, uncached. The one change is the one random weights force on any runner: the first
codebook is restricted to the semantic tokens (plus ``<|im_end|>`` unless a fixed frame count
is asked for) by masking the full-vocabulary logits, so the baseline keeps paying for them.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Unpack

import numpy as np
import torch
from fish_speech.content_sequence import ContentSequence, TextPart, VQPart
from fish_speech.models.text2semantic import inference as upstream
from fish_speech.tokenizer import IM_END_TOKEN

from engine.audio_io import SAMPLE_RATE, ReferenceAudio, load_reference
from engine.compile_cache import configure_compilation
from engine.machine import device_name
from engine.measure import perf_model
from engine.model.checkpoint import CheckpointFolder
from engine.model.upstream import load_codec
from engine.profile import DTYPES, EngineProfile, upstream_precision
from engine.sampling import GenerateOptions, read_options
from engine.telemetry import Measure, SynthesisReport

log = logging.getLogger(__name__)

# Upstream draws a tqdm bar per request; silence it so sweeps and servers log cleanly (the bar's
# cost per frame is microseconds, far below the frame time being compared).
upstream.tqdm = functools.partial(upstream.tqdm, disable=True)

_decode_n_tokens = upstream.decode_n_tokens
_decode_started: list[float] = []


def _timed_decode_n_tokens(model, *args, **kwargs):
    """Upstream's frame loop, entered once prefill is done: marks that moment, so upstream's
    decode time excludes prefill exactly as ours does."""
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    _decode_started.append(time.perf_counter())
    return _decode_n_tokens(model, *args, **kwargs)


upstream.decode_n_tokens = _timed_decode_n_tokens


class UpstreamBaseline:
    """Upstream inference for one checkpoint; ``compile=True`` is upstream's ``--compile``."""

    def __init__(
        self, checkpoint: CheckpointFolder, device: torch.device, compile: bool = False
    ) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.precision = upstream_precision(device.type)
        self.dtype = DTYPES[self.precision]
        self.compiled = compile
        if compile:
            # Upstream's --compile (reduce-overhead) under the same settings and cache as our rows.
            stand_in = EngineProfile(
                device=device.type,
                precision=self.precision,
                compile_decode="reduce-overhead",
            )
            name = device_name(device)
            configure_compilation(stand_in, checkpoint.file("config.json"), f"upstream {name}")
        self.model, self.decode_one_token = upstream.init_model(
            str(checkpoint.path), device, self.dtype, compile=compile
        )
        self.codec = load_codec(checkpoint, device, self.dtype)
        tok = self.model.tokenizer
        allowed = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=device)
        allowed[
            tok.semantic_begin_id : tok.semantic_begin_id
            + self.codec.quantizer.semantic_quantizer.codebook_size
        ] = True
        self._allow_semantic = allowed
        self._allow_semantic_or_end = allowed.clone()
        self._allow_semantic_or_end[tok.get_token_id(IM_END_TOKEN)] = True
        self._allowed = self._allow_semantic_or_end
        self._restrict_first_codebook()
        self.last_report = SynthesisReport()

    def frame_bytes(self) -> perf_model.FrameBytes:
        """Bytes one upstream frame reads (perf model): it always attends the whole cache."""
        return perf_model.upstream(self.model.config, self.precision)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", compile: bool = False
    ) -> UpstreamBaseline:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(CheckpointFolder.open(path), torch.device(device), compile)

    def _restrict_first_codebook(self) -> None:
        model = self.model
        forward_generate = model.forward_generate

        def restricted(*args, **kwargs):
            result = forward_generate(*args, **kwargs)
            result.logits = result.logits.masked_fill(~self._allowed, -float("inf"))
            return result

        model.forward_generate = restricted

    def _reference_codes(self, reference: ReferenceAudio) -> torch.Tensor:
        audio = load_reference(reference)
        wav = torch.from_numpy(audio).to(self.device, self.dtype)[None, None]
        lengths = torch.tensor([wav.shape[2]], device=self.device, dtype=torch.long)
        return self.codec.encode(wav, lengths)[0][0]

    @torch.inference_mode()
    def synthesize(
        self,
        text: str,
        reference_audio: ReferenceAudio | None = None,
        reference_text: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> np.ndarray:
        """Audio for ``text`` the way upstream makes it; ``options`` as for our engine."""
        params, max_new_tokens, fixed_frames = read_options(options)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        report = SynthesisReport()
        with Measure(self.device, report) as measure:
            t0 = time.perf_counter()
            seq = ContentSequence(modality="interleave")
            if reference_audio is not None:
                codes = self._reference_codes(reference_audio)
                seq.append(
                    [TextPart(text=reference_text or ""), VQPart(codes=codes.cpu())],
                    add_end=True,
                    speaker=0,
                )
            seq.append([TextPart(text=text)], add_end=False, speaker=0)
            encoded, audio_masks, audio_parts = seq.encode_for_inference(
                self.model.tokenizer, num_codebooks=self.model.config.num_codebooks
            )
            report.encode_s = time.perf_counter() - t0
            self._allowed = self._allow_semantic if fixed_frames else self._allow_semantic_or_end
            t1 = time.perf_counter()
            _decode_started.clear()
            y = upstream.generate(
                model=self.model,
                prompt=encoded.to(self.device),
                max_new_tokens=fixed_frames or max_new_tokens,
                audio_masks=audio_masks,
                audio_parts=audio_parts,
                decode_one_token=self.decode_one_token,
                temperature=params.temperature,
                top_p=params.top_p,
                repetition_penalty=params.repetition_penalty,
            )
            codes = y[1:, encoded.shape[1] :]
            if y[0, -1] == self.model.tokenizer.get_token_id(IM_END_TOKEN):
                codes = codes[:, :-1]
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t_end = time.perf_counter()
            decode_start = _decode_started[0] if _decode_started else t1
            report.prefill_s = decode_start - t1
            report.decode_s = t_end - decode_start
            report.frames = codes.shape[1]
            t2 = time.perf_counter()
            lengths = torch.tensor([codes.shape[1]], device=self.device)
            audio = self.codec.decode(codes[None], lengths)[0].squeeze().float().cpu().numpy()
            report.codec_s = time.perf_counter() - t2
            report.ttfa_s = time.perf_counter() - measure.start
        report.audio_s = len(audio) / SAMPLE_RATE
        self.last_report = report
        return audio
