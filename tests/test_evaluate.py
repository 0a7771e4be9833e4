"""Perplexity streaming equals a direct computation over the same logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infini_cli.config import preset
from infini_cli.evaluate import perplexity
from infini_cli.memory import StreamState
from infini_cli.stream import feed

from .conftest import random_model


def test_perplexity_matches_direct_cross_entropy():
    cfg = preset("tiny")
    model = random_model(cfg, seed=3)
    ids = torch.randint(0, cfg.vocab_size, (3 * cfg.segment_len + 5,), generator=torch.Generator().manual_seed(0))
    for mem in (True, False):
        logits, _ = feed(model, StreamState.empty(cfg), ids, use_memory=mem)
        ref = F.cross_entropy(logits[0, :-1], ids[1:], reduction="mean").item()
        p = perplexity(model, ids.tolist(), use_memory=mem)
        assert p.tokens == len(ids) - 1
        assert math.isclose(math.log(p.value), ref, rel_tol=1e-5)


def test_memory_changes_perplexity_after_the_first_segment():
    cfg = preset("tiny")
    model = random_model(cfg, seed=4)
    ids = list(range(cfg.segment_len)) * 3
    on, off = perplexity(model, ids, True), perplexity(model, ids, False)
    assert on.value != off.value
