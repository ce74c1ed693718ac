"""Sampling without device-to-host syncs: top-p, temperature and a windowed repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import RequestError

REPETITION_WINDOW = 16


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; part of the semantic-token cache key."""

    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.temperature <= 2.0:
            raise RequestError(f"temperature must be in (0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.5 <= self.repetition_penalty <= 2.0:
            raise RequestError(
                f"repetition_penalty must be in [0.5, 2], got {self.repetition_penalty}"
            )


def sample(
    logits: Tensor, previous: Tensor, temperature: Tensor, top_p: Tensor, penalty: Tensor
) -> Tensor:
    """Sample one index from ``logits`` [V] (float32 math); ``previous`` [W] are penalised ids."""
    logits = logits.float()
    score = logits.gather(0, previous)
    logits = logits.scatter(0, previous, torch.where(score < 0, score * penalty, score / penalty))
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = cum > top_p
    drop_sorted[0] = False
    drop = drop_sorted.scatter(0, order, drop_sorted)
    logits = logits.masked_fill(drop, -float("inf")) / temperature.clamp(min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1, keepdim=True)
