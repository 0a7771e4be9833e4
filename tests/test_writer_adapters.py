"""Query/key adapters for a writer's memory: they start as the identity, the gradient reaches
the first segment through the memory, passkey documents put the key beyond the question's
window, saved adapters load back, a run resumes (tiny models only)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from infini_cli.memory import StreamState
from infini_cli.tasks.passkey_prompt import Haystack, PasskeyPromptBuilder
from infini_cli.training.writer_adapters import (
    WriterAdapterConfig,
    add_qk_adapters,
    apply_adapters,
    passkey_document,
    save_adapters,
    train_adapters,
    two_segment_loss,
)
from tests.conftest import random_model, tiny_config


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    out, _ = model(ids, StreamState.empty(model.config, 1, torch.device("cpu")))
    return out


def test_new_adapters_leave_the_model_as_it_was_and_only_touch_queries_and_keys(tokenizer):
    model = random_model(tiny_config(tokenizer))
    ids = torch.randint(0, tokenizer.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    before = logits_of(model, ids)
    params = add_qk_adapters(model, rank=4)
    assert len(params) == 2 * model.config.n_layers
    torch.testing.assert_close(logits_of(model, ids), before, rtol=0, atol=0)
    cfg = model.config
    attn = model.layers[0].attn
    x = torch.randn(1, 3, cfg.d_model)
    with torch.no_grad():
        attn.wqkv.B.normal_()
    changed = (attn.wqkv(x) - attn.wqkv.base(x)).abs().amax(dim=(0, 1))
    qk = (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim
    assert changed[:qk].min() > 0 and changed[qk:].max() == 0  # the values stay as converted


def test_the_loss_reaches_the_memory_the_first_segment_wrote(tokenizer, monkeypatch):
    """The memory written after the first segment stays in the graph: the loss has a gradient
    there, so the first segment's keys and values (and their adapters) learn from what the
    second segment reads; with the gates shut nothing is read and the gradient is nil."""
    from infini_cli.training import writer_adapters

    model = random_model(tiny_config(tokenizer))
    S = model.config.segment_len
    add_qk_adapters(model, rank=4)
    for p in model.parameters():
        p.requires_grad_(True)
    written = []
    commit = writer_adapters.commit_segment
    monkeypatch.setattr(writer_adapters, "commit_segment", lambda *a: written.append(commit(*a)) or written[-1])
    ids = torch.randint(0, tokenizer.vocab_size, (1, 2 * S + 1), generator=torch.Generator().manual_seed(2))

    def grad_at_memory() -> float:
        written.clear()
        loss = two_segment_loss(model, ids)
        memory = written[0].M[0]
        assert memory.grad_fn is not None
        return torch.autograd.grad(loss, memory)[0].abs().sum().item()

    assert grad_at_memory() > 1e-6
    with torch.no_grad():
        for b in model.layers:
            b.attn.gate.fill_(-60.0)
    assert grad_at_memory() < 1e-12


def test_a_passkey_document_puts_the_key_in_the_first_segment_and_the_answer_last(tokenizer):
    builder = PasskeyPromptBuilder(tokenizer, Haystack.standard(tokenizer))
    seg = 256
    rng = random.Random(0)
    for _ in range(5):
        ids, answer_start = passkey_document(builder, seg, rng)
        assert seg < len(ids) <= 2 * seg
        text = tokenizer.decode(ids[:seg])
        key = tokenizer.decode(ids[answer_start:]).strip().rstrip(".")
        assert key.isdigit() and len(key) == 5
        assert f"The pass key is {key}." in text  # the key: before the second segment
        assert key not in tokenizer.decode(ids[seg:answer_start])  # the question's window lacks it
        assert tokenizer.decode(ids[:answer_start]).endswith("What is the pass key? The pass key is")
    with pytest.raises(ValueError, match="too short"):
        passkey_document(builder, 32, rng)


def test_saved_adapters_load_into_a_fresh_model(tmp_path, tokenizer):
    a = random_model(tiny_config(tokenizer), seed=0)
    add_qk_adapters(a, rank=4)
    with torch.no_grad():
        for b in a.layers:
            b.attn.wqkv.B.normal_()
    save_adapters(a, tmp_path / "ad.safetensors")
    b = random_model(tiny_config(tokenizer), seed=0)
    with torch.no_grad():
        for blk in b.layers:
            blk.attn.gate.zero_()
    apply_adapters(b, tmp_path / "ad.safetensors")
    ids = torch.randint(0, tokenizer.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits_of(b, ids), logits_of(a, ids))
    other = random_model(tiny_config(tokenizer, n_layers=3))
    with pytest.raises(ValueError, match="adapters and gates"):
        apply_adapters(other, tmp_path / "ad.safetensors")


def run(tmp_path, books, steps: int, name: str) -> WriterAdapterConfig:
    return WriterAdapterConfig(out_dir=str(tmp_path / name), data_dir=str(books), steps=steps, rank=2, warmup=1,
                               book_every=2)


def test_only_adapters_and_gates_learn_and_a_resumed_run_equals_an_unbroken_one(tmp_path, books, tokenizer):
    cfg = tiny_config(tokenizer, segment_len=256)
    builder = PasskeyPromptBuilder(tokenizer, Haystack.standard(tokenizer))
    whole = random_model(cfg, gate_std=0.0)
    before = {k: v.clone() for k, v in whole.state_dict().items()}
    train_adapters(whole, tokenizer, builder, run(tmp_path, books, 4, "whole"), log=lambda s: None)
    after = whole.state_dict()
    for k, was in before.items():  # the converted weights (now under wqkv.base) never move
        key = k.replace("attn.wqkv.weight", "attn.wqkv.base.weight")
        assert torch.equal(was, after[key]) != k.endswith("attn.gate"), k

    parts = random_model(cfg, gate_std=0.0)
    train_adapters(parts, tokenizer, builder, run(tmp_path, books, 2, "parts"), log=lambda s: None)
    fresh = random_model(cfg, gate_std=0.0)
    logged: list[str] = []
    train_adapters(fresh, tokenizer, builder, run(tmp_path, books, 4, "parts"), log=logged.append)
    assert logged[0] == "resumed at step 2"
    for a, b in zip(whole.layers, fresh.layers):
        torch.testing.assert_close(a.attn.wqkv.B, b.attn.wqkv.B)
        torch.testing.assert_close(a.attn.gate, b.attn.gate)
    with pytest.raises(ValueError, match="another configuration"):
        train_adapters(fresh, tokenizer, builder, dataclasses.replace(run(tmp_path, books, 6, "parts"), rank=3),
                       log=lambda s: None)
