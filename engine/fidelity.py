"""How faithful a profile is to fp32: teacher-forced logits and codec SNR on the same codes.

Both engines read the same token sequence (generated once by the fp32 engine), so sampling noise
plays no part: the slow head's and the fast heads' distributions are compared position by
position, and the codec decodes identical codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import dual_ar
from engine.audio_io import ReferenceAudio
from engine.engine import OptimizedFishSpeech
from engine.profile import EngineProfile
from engine.sampling import SamplingParams

# Gates the harness applies to every candidate. Random weights give nearly tied logits, so top-1
# agreement flips on differences far below audibility; KL is the primary gate. Measured on the
# tiny checkpoint (CPU, 32 frames): fp32 vs fp32 KL = 0 and top-1 = 1 exactly; dynamic int8 slow
# KL 3.8e-5, fast KL 4.6e-5, top-1 0.97 / 0.93. The KL gates sit two orders of magnitude above
# that spread (bf16/int4 on GPU are expected to land between), so a broken kernel (KL ~0.1 and
# up, top-1 near chance) fails while sane quantization passes.
FIDELITY_GATES: dict[str, float] = {
    "slow_kl_max": 0.01,
    "fast_kl_max": 0.01,
    "slow_top1_min": 0.80,
    "fast_top1_min": 0.80,
    "codec_snr_db_min": 20.0,
}
SNR_CAP_DB = 300.0


@dataclass(frozen=True)
class TeacherForced:
    slow_logits: torch.Tensor  # [frames, semantic + 1]
    fast_logits: torch.Tensor  # [frames, num_codebooks - 1, residual]


def reference_profile(device: str) -> EngineProfile:
    """The fp32, uncompiled, unquantized profile every candidate is compared against."""
    return EngineProfile(device=device, precision="fp32", tf32=False)


@torch.inference_mode()
def teacher_forced_logits(
    engine: OptimizedFishSpeech, sequence: torch.Tensor, prompt_len: int
) -> TeacherForced:
    """Logits predicting each generated frame of ``sequence`` [1 + C, T] from its true prefix."""
    torch.backends.cuda.matmul.allow_tf32 = engine.active_profile.tf32
    dec = engine.decoder
    model = dec.model
    seq = sequence.to(engine.device)
    hidden = dual_ar.slow_hidden_uncached(model, seq[None, :, :-1])[0, prompt_len - 1 :]
    slow = F.linear(model.norm(hidden), dec.slow_head).float()
    codes = seq[1:, prompt_len:].T  # [frames, C]
    fast_in = torch.cat(
        [
            model.fast_project_in(hidden)[:, None],
            model.fast_embeddings(codes[:, : dec.num_codebooks - 1]),
        ],
        dim=1,
    )
    fast = F.linear(dual_ar.fast_uncached(model, fast_in)[:, 1:], dec.fast_head).float()
    return TeacherForced(slow.cpu(), fast.cpu())


def _agreement(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float]:
    top1 = (ref.argmax(-1) == cand.argmax(-1)).float().mean().item()
    kl = F.kl_div(
        F.log_softmax(cand, -1), F.log_softmax(ref, -1), log_target=True, reduction="none"
    )
    return top1, kl.sum(-1).mean().item()


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return SNR_CAP_DB
    return min(SNR_CAP_DB, 10.0 * math.log10(signal / noise)) if signal > 0 else -SNR_CAP_DB


def measure_fidelity(
    checkpoint: str,
    profile: EngineProfile,
    text: str = "The quick brown fox jumps over the lazy dog.",
    reference_audio: ReferenceAudio | None = None,
    reference_text: str | None = None,
    frames: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Fidelity figures of ``profile`` against fp32 on ``checkpoint`` (see FIDELITY_GATES)."""
    reference = OptimizedFishSpeech.from_checkpoint(checkpoint, reference_profile(profile.device))
    ref_codes = (
        reference.reference_codes(reference_audio)[0] if reference_audio is not None else None
    )
    prompt = reference.build_prompt(text, ref_codes, reference_text)
    blocks = reference.decoder.generate(
        prompt, SamplingParams(seed=seed), frames, fixed_frames=frames
    )
    codes = torch.cat(list(blocks), dim=1).cpu()
    tokens = codes[:1] + reference.decoder.semantic_begin
    sequence = torch.cat([prompt, torch.cat([tokens, codes])], dim=1)
    ref_logits = teacher_forced_logits(reference, sequence, prompt.shape[1])
    ref_audio = reference.codec.decode(codes)
    del reference

    candidate = OptimizedFishSpeech.from_checkpoint(checkpoint, profile)
    cand_logits = teacher_forced_logits(candidate, sequence, prompt.shape[1])
    cand_audio = candidate.codec.decode(codes)
    slow_top1, slow_kl = _agreement(ref_logits.slow_logits, cand_logits.slow_logits)
    fast_top1, fast_kl = _agreement(ref_logits.fast_logits, cand_logits.fast_logits)
    streamed = np.concatenate(
        list(candidate.synthesize_stream(text, fixed_frames=frames, seed=seed))
    )
    one_shot = candidate.synthesize(text, fixed_frames=frames, seed=seed)
    return {
        "slow_top1": slow_top1,
        "slow_kl": slow_kl,
        "fast_top1": fast_top1,
        "fast_kl": fast_kl,
        "codec_snr_db": snr_db(ref_audio, cand_audio),
        "stream_max_abs_diff": float(np.max(np.abs(streamed - one_shot))),
        "frames": frames,
    }


def passes_gates(figures: dict[str, float], gates: dict[str, float] = FIDELITY_GATES) -> list[str]:
    """Reasons ``figures`` fail the gates (empty when they pass)."""
    checks = [
        ("slow_kl", "<=", gates["slow_kl_max"]),
        ("fast_kl", "<=", gates["fast_kl_max"]),
        ("slow_top1", ">=", gates["slow_top1_min"]),
        ("fast_top1", ">=", gates["fast_top1_min"]),
        ("codec_snr_db", ">=", gates["codec_snr_db_min"]),
    ]
    failures = []
    for key, op, limit in checks:
        value = figures.get(key)
        ok = value is not None and (value <= limit if op == "<=" else value >= limit)
        if not ok:
            failures.append(f"{key}={value} not {op} {limit}")
    return failures
