"""Training a writer's gates: streamed losses equal the model's own, only the gates learn, a
resumed run equals an unbroken one, saved gates load back (tiny models only)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from infini_cli.memory import StreamState
from infini_cli.training.writer_memory import (
    WriterMemoryConfig,
    apply_gates,
    book_documents,
    save_gates,
    segment_losses,
    train_gates,
)
from tests.conftest import random_model, tiny_config


def test_local_only_losses_are_each_segment_on_its_own(tokenizer):
    model = random_model(tiny_config(tokenizer))
    S = model.config.segment_len
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 3 * S + 1), generator=torch.Generator().manual_seed(0))
    got = segment_losses(model, tokens, use_memory=False)
    for i, loss in enumerate(got):
        logits, _ = model(tokens[:, i * S:(i + 1) * S], StreamState.empty(model.config, 1, torch.device("cpu")),
                          use_memory=False)
        want = F.cross_entropy(logits[0], tokens[0, i * S + 1:(i + 1) * S + 1])
        assert loss == pytest.approx(want.item(), rel=1e-5)


def test_memory_changes_later_segments_only_through_the_gates(tokenizer):
    model = random_model(tiny_config(tokenizer))
    S = model.config.segment_len
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 3 * S), generator=torch.Generator().manual_seed(1))
    local = segment_losses(model, tokens, use_memory=False)
    with torch.no_grad():
        for b in model.layers:
            b.attn.gate.fill_(-30.0)  # closed: the memory adds nothing
    assert segment_losses(model, tokens) == pytest.approx(local, rel=1e-5)
    with torch.no_grad():
        for b in model.layers:
            b.attn.gate.fill_(0.0)
    mixed = segment_losses(model, tokens)
    assert all(abs(a - b) > 1e-4 for a, b in zip(mixed[1:], local[1:]))
    # never written, every segment reads an empty memory: each segment as the first one is
    unwritten = segment_losses(model, tokens, write=False)
    assert unwritten[0] == pytest.approx(mixed[0], rel=1e-6)
    for i, loss in enumerate(unwritten):
        alone = segment_losses(model, tokens[:, i * S:(i + 1) * S + 1])[0]
        assert loss == pytest.approx(alone, rel=1e-5)
    assert all(abs(a - b) > 1e-4 for a, b in zip(mixed[1:], unwritten[1:]))


def test_bad_lengths_are_refused(tokenizer):
    model = random_model(tiny_config(tokenizer))
    with pytest.raises(ValueError, match="whole number"):
        segment_losses(model, torch.zeros(1, model.config.segment_len + 5, dtype=torch.long))


def run(tmp_path, books, steps, name):
    return WriterMemoryConfig(out_dir=str(tmp_path / name), data_dir=str(books), steps=steps, doc_segments=2,
                              warmup=1, lr=0.1)


def test_only_the_gates_learn_and_a_resumed_run_equals_an_unbroken_one(tmp_path, books, tokenizer):
    cfg = tiny_config(tokenizer)
    whole = random_model(cfg, gate_std=0.0)
    before = {k: v.clone() for k, v in whole.state_dict().items()}
    train_gates(whole, tokenizer, run(tmp_path, books, 4, "whole"), log=lambda s: None)
    after = whole.state_dict()
    for k, was in before.items():
        if k.endswith("attn.gate"):
            assert not torch.equal(was, after[k]), k
        else:
            assert torch.equal(was, after[k]), k

    parts = random_model(cfg, gate_std=0.0)
    train_gates(parts, tokenizer, run(tmp_path, books, 2, "parts"), log=lambda s: None)
    fresh = random_model(cfg, gate_std=0.0)
    logged = []
    train_gates(fresh, tokenizer, run(tmp_path, books, 4, "parts"), log=logged.append)
    assert logged[0] == "resumed at step 2"
    for a, b in zip(whole.layers, fresh.layers):
        assert torch.equal(a.attn.gate, b.attn.gate)


def test_a_run_with_another_configuration_is_not_resumed(tmp_path, books, tokenizer):
    model = random_model(tiny_config(tokenizer), gate_std=0.0)
    train_gates(model, tokenizer, run(tmp_path, books, 2, "r"), log=lambda s: None)
    other = dataclasses.replace(run(tmp_path, books, 4, "r"), lr=0.5)
    with pytest.raises(ValueError, match="another configuration"):
        train_gates(model, tokenizer, other, log=lambda s: None)


def test_saved_gates_load_into_a_model_of_the_same_shape_only(tmp_path, tokenizer):
    a = random_model(tiny_config(tokenizer), seed=0)
    b = random_model(tiny_config(tokenizer), seed=5)
    save_gates(a, tmp_path / "g.safetensors")
    apply_gates(b, tmp_path / "g.safetensors")
    assert torch.equal(a.gates(), b.gates())
    bigger = random_model(tiny_config(tokenizer, n_layers=3))
    with pytest.raises(ValueError, match="not this model's 3 gates"):
        apply_gates(bigger, tmp_path / "g.safetensors")


def test_documents_are_windows_of_the_books_and_short_books_are_an_error(tmp_path, books, tokenizer):
    docs = book_documents(sorted(books.glob("*.txt")), tokenizer, 40, random.Random(0))
    d = next(docs)
    assert d.shape == (1, 40)
    assert tokenizer.decode(d[0].tolist()).strip() in (books / "book0.txt").read_text() + (books / "book1.txt").read_text()
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("Too short.")
    with pytest.raises(ValueError, match="holds a window"):
        next(book_documents([short / "a.txt"], tokenizer, 40, random.Random(0)))
