"""Sampling without device-to-host syncs: top-p, temperature and a windowed repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypedDict

import torch
from torch import Tensor

from engine.errors import RequestError

REPETITION_WINDOW = 16
MAX_NEW_TOKENS = 1024  # frames per text chunk unless the caller asks for fewer (about 47 s)
TEMPERATURE_MAX = 2.0  # temperature is in (0, TEMPERATURE_MAX]
TOP_P_MAX = 1.0  # top_p is in (0, TOP_P_MAX]
REPETITION_PENALTY_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; part of the semantic-token cache key.

    The defaults here are the only copy: the CLI, the sweep scenario, the service's schemas and
    (through ``GET /v1/defaults``) the UIs all read them from this class.
    """

    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.temperature <= TEMPERATURE_MAX:
            raise RequestError(
                f"temperature must be in (0, {TEMPERATURE_MAX:g}], got {self.temperature}"
            )
        if not 0.0 < self.top_p <= TOP_P_MAX:
            raise RequestError(f"top_p must be in (0, {TOP_P_MAX:g}], got {self.top_p}")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise RequestError(
                f"repetition_penalty must be in [{low:g}, {high:g}], got {self.repetition_penalty}"
            )

    def as_tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """``[temperature, top_p, repetition_penalty]``, the decoder's on-device settings."""
        return torch.tensor([self.temperature, self.top_p, self.repetition_penalty], device=device)


DEFAULT_SAMPLING = SamplingParams()


class GenerateOptions(TypedDict, total=False):
    """Keyword options of every ``synthesize`` method (ours and the upstream baseline's).

    Unset ones take ``SamplingParams``' defaults and ``MAX_NEW_TOKENS``; ``fixed_frames`` ignores
    end-of-speech and makes exactly that many frames.
    """

    max_new_tokens: int
    fixed_frames: int | None
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None


def read_options(options: GenerateOptions) -> tuple[SamplingParams, int, int | None]:
    """Sampling settings, frame budget and fixed frame count from ``options``; unknown keys fail."""
    unknown = set(options) - set(GenerateOptions.__annotations__)
    if unknown:
        raise TypeError(f"unexpected synthesis options: {', '.join(sorted(unknown))}")
    names = {f.name for f in fields(SamplingParams)}
    params = SamplingParams(**{k: v for k, v in options.items() if k in names})
    return params, options.get("max_new_tokens", MAX_NEW_TOKENS), options.get("fixed_frames")


def sample(
    logits: Tensor,
    previous: Tensor,
    temperature: Tensor,
    top_p: Tensor,
    penalty: Tensor,
    noise: Tensor | None = None,
) -> Tensor:
    """Sample one index per row from ``logits`` [..., V] (float32 math); ``previous`` [..., W]
    are penalised ids. The settings broadcast against the rows ([] for one, [B, 1] for B).

    Sampling is ``argmax(p / e)`` with ``e ~ Exp(1)``, which draws index i with probability p_i.
    ``noise`` supplies ``e`` (a batched step draws each row's from that request's own generator,
    so its samples do not depend on its neighbours); by default it is drawn from torch's.
    """
    logits = logits.float()
    score = logits.gather(-1, previous)
    logits = logits.scatter(-1, previous, torch.where(score < 0, score * penalty, score / penalty))
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = cum > top_p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    logits = logits.masked_fill(drop, -float("inf")) / temperature.clamp(min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1, keepdim=True)
