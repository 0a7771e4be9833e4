"""Perplexity of a model over long text, streamed segment by segment, memory on or off."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .memory import StreamState
from .model import InfiniTransformer
from .stream import feed


@dataclass
class Perplexity:
    tokens: int
    nll: float  # summed negative log-likelihood, nats

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    def __add__(self, other: "Perplexity") -> "Perplexity":
        return Perplexity(self.tokens + other.tokens, self.nll + other.nll)


@torch.inference_mode()
def perplexity(model: InfiniTransformer, ids: Sequence[int], use_memory: bool = True,
               skip_first_segment: bool = False) -> Perplexity:
    """Next-token perplexity over one long token sequence, streamed a segment at a time.

    With use_memory=False every segment sees only itself (the model's local attention), so
    the difference between the two is what the compressive memory contributes.
    skip_first_segment scores only tokens that have a memory to read (segment 2 onwards).
    """
    device = next(model.parameters()).device
    S = model.config.segment_len
    state = StreamState.empty(model.config, 1, device, model.embed.weight.dtype)
    total = Perplexity(0, 0.0)
    t = torch.tensor(list(ids), dtype=torch.long)
    for start in range(0, len(t) - 1, S):
        x = t[start:start + S]
        y = t[start + 1:start + S + 1]
        logits, state = feed(model, state, x, logits="all", use_memory=use_memory)
        logits = logits[0, : len(y)].float()
        if skip_first_segment and start == 0:
            continue
        nll = F.cross_entropy(logits, y.to(device), reduction="sum").item()
        total = total + Perplexity(len(y), nll)
    return total


def perplexity_over(model: InfiniTransformer, documents: Iterable[Sequence[int]], use_memory: bool = True,
                    skip_first_segment: bool = False) -> Perplexity:
    total = Perplexity(0, 0.0)
    for ids in documents:
        total = total + perplexity(model, ids, use_memory, skip_first_segment)
    return total
