"""The model against an explicit reference, and its local-only path against plain Llama."""

from __future__ import annotations

import pytest
import torch

from infini_cli.config import ModelConfig, preset
from infini_cli.memory import StreamState
from infini_cli.stream import feed

from .conftest import random_model
from .reference import reference_forward


@pytest.mark.parametrize("name", ["tiny", "tiny-delta"])
def test_model_matches_explicit_reference_over_several_segments(name):
    """Covers the grouped-query head mapping, one memory per layer, pre-RoPE memory, gates."""
    cfg = preset(name)
    model = random_model(cfg, seed=4)
    tokens = torch.randint(0, cfg.vocab_size, (3 * cfg.segment_len + 5,), generator=torch.Generator().manual_seed(0))
    got, state = feed(model, StreamState.empty(cfg), tokens)
    ref = reference_forward(model, tokens.tolist())
    torch.testing.assert_close(got[0].double(), ref, rtol=1e-4, atol=1e-4)
    # each layer has its own memory: no sharing across layers
    assert not torch.allclose(state.M[0], state.M[1])


def test_wrong_group_mapping_would_be_caught():
    """The reference distinguishes kv-head mappings: swapping kv heads changes the output."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=5)
    tokens = list(range(2 * cfg.segment_len))
    ref = reference_forward(model, tokens)
    with torch.no_grad():
        D = cfg.head_dim
        k0 = cfg.n_heads * D  # the K rows of the fused wqkv start after Q's
        for b in model.layers:
            w = b.attn.wqkv.weight
            first, second = w[k0:k0 + D].clone(), w[k0 + D:k0 + 2 * D].clone()
            w[k0:k0 + D], w[k0 + D:k0 + 2 * D] = second, first
    swapped, _ = feed(model, StreamState.empty(cfg), tokens)
    assert (swapped[0].double() - ref).abs().max() > 1e-3


def test_gate_forced_local_equals_plain_causal_llama():
    cfg = preset("tiny")
    model = random_model(cfg, seed=6)
    with torch.no_grad():
        for b in model.layers:
            b.attn.gate.fill_(-1e4)  # sigmoid(-1e4) == 0 exactly in float32
    tokens = list(range(5, 5 + cfg.segment_len))
    got, _ = feed(model, StreamState.empty(cfg), tokens)
    llama = reference_forward(model, tokens, use_memory=False)
    torch.testing.assert_close(got[0].double(), llama, rtol=1e-5, atol=1e-5)


def test_memory_off_switch_equals_local_only_reference():
    cfg = preset("tiny")
    model = random_model(cfg, seed=7)
    tokens = list(range(2 * cfg.segment_len + 3))
    got, _ = feed(model, StreamState.empty(cfg), tokens, use_memory=False)
    ref = reference_forward(model, tokens, use_memory=False)
    torch.testing.assert_close(got[0].double(), ref, rtol=1e-5, atol=1e-5)


def test_gates_are_parameters_that_learn():
    """The gate must receive gradient (a gate stuck at its start is a known failure)."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=8)
    model.train()
    from infini_cli.stream import train_forward

    tokens = torch.randint(0, cfg.vocab_size, (2, 3 * cfg.segment_len))
    h = train_forward(model, tokens)
    h[:, -cfg.segment_len:].pow(2).mean().backward()
    for b in model.layers:
        assert b.attn.gate.grad is not None and b.attn.gate.grad.abs().sum() > 0


def test_forward_refuses_more_than_one_segment():
    cfg = preset("tiny")
    model = random_model(cfg)
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.zeros(1, cfg.segment_len + 1, dtype=torch.long), StreamState.empty(cfg))


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError):
        ModelConfig(memory_rule="quadratic")  # type: ignore[arg-type]
