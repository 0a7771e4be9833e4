"""`infini convert` of a tiny random transformers Llama reproduces its logits."""

from __future__ import annotations


import pytest
import torch
from typer.testing import CliRunner

from infini_cli.checkpoint import load_checkpoint
from infini_cli.cli import app
from infini_cli.memory import StreamState
from infini_cli.stream import feed

transformers = pytest.importorskip("transformers")


def make_hf_llama(folder, tokenizer, tie=False, max_positions=64):
    cfg = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_convert_reproduces_transformers_logits(tmp_path, tokenizer, tie):
    folder = tmp_path / "hf"
    folder.mkdir()
    hf = make_hf_llama(folder, tokenizer, tie)
    out = tmp_path / "converted.safetensors"
    r = CliRunner().invoke(app, ["convert", str(folder), str(out), "--segment-len", "64"])
    assert r.exit_code == 0, r.output
    model = load_checkpoint(out).model
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
    got, _ = feed(model, StreamState.empty(model.config), tokens)
    assert (got - ref).abs().max().item() <= 1e-4


def test_convert_refuses_a_folder_without_config(tmp_path):
    r = CliRunner().invoke(app, ["convert", str(tmp_path), str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and "config.json" in r.output and "Traceback" not in r.output
