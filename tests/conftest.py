"""Shared fixtures: a tiny tokenizer, tiny models and checkpoints built on the spot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from infini_cli.checkpoint import save_checkpoint
from infini_cli.config import ModelConfig, preset
from infini_cli.model import InfiniTransformer
from infini_cli.tasks.passkey_prompt import FILLER, KEY_LINE, QUESTION, TASK
from infini_cli.tokenizer import TextTokenizer, train_tokenizer

CORPUS = [
    TASK, FILLER, KEY_LINE.format(k="12345"), QUESTION,
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money.",
    "The committee decided to postpone the vote until the spring meeting.",
] * 20


@pytest.fixture(scope="session")
def tokenizer() -> TextTokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


def tiny_config(tokenizer: TextTokenizer | None = None, **changes) -> ModelConfig:
    cfg = preset("tiny")
    if tokenizer is not None:
        changes.setdefault("vocab_size", tokenizer.vocab_size)
    return dataclasses.replace(cfg, **changes)


def random_model(cfg: ModelConfig, seed: int = 0, gate_std: float = 1.0) -> InfiniTransformer:
    """A model with random weights and random gates (so memory and local both matter)."""
    model = InfiniTransformer(cfg).init_weights(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.layers:
            block.attn.gate.copy_(torch.randn(cfg.n_heads, generator=gen) * gate_std)
            # larger weights than the training init so attention patterns are not uniform
            qk = (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim  # the Q and K rows of the fused wqkv
            block.attn.wqkv.weight[:qk].mul_(10)
    return model.eval()


BOOK_TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. "
             "Winston Smith slipped quickly through the glass doors of Victory Mansions. ") * 40


@pytest.fixture
def books(tmp_path) -> Path:
    """A folder of two small training books."""
    d = tmp_path / "books"
    d.mkdir()
    for i in range(2):
        (d / f"book{i}.txt").write_text(BOOK_TEXT + f"The end of book {i}.\n")
    return d


@pytest.fixture
def tiny_model(tokenizer) -> InfiniTransformer:
    return random_model(tiny_config(tokenizer))


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tokenizer, tiny_model) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_model, tokenizer, training={"steps": 0})
    return path


def assert_one_line_error(result, code, *words):
    """A CLI failure: the exit code, one line starting with 'error:', the given words, no traceback."""
    assert result.exit_code == code, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:")
    for w in words:
        assert w in text, text


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own document cache and data directory, never the user's (a writer
    pulled there would otherwise become the tests' default for ask and summarize)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("INFINI_CACHE_DIR", str(d))
    monkeypatch.setenv("INFINI_HOME", str(tmp_path / "infini-home"))
    monkeypatch.delenv("INFINI_MODEL", raising=False)
    # no test compiles a decoding step unless it asks to (a minute for the real writer, 15 s
    # for a tiny one): tests/test_decode_compiled.py turns it back on
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "0")
    return d
