"""`infini convert` of a GGUF file: the same logits as transformers, the same token ids, and
untrusted files refused in one line before anything large is allocated."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from infini_cli.checkpoint import CheckpointError, load_checkpoint, read_header
from infini_cli.cli import app
from infini_cli.gguf_convert import convert_gguf, unpermute_rope
from infini_cli.memory import StreamState
from infini_cli.stream import feed

from .conftest import assert_one_line_error
from .gguf_factory import llama_cpp_permute, write_gguf
from .test_convert import make_hf_llama

transformers = pytest.importorskip("transformers")
runner = CliRunner()


def converted_logits(path, tokens):
    model = load_checkpoint(path).model
    got, _ = feed(model, StreamState.empty(model.config), tokens)
    return got


@pytest.mark.parametrize("qtype,tol", [("F32", 1e-4), ("F16", 2e-2), ("Q8_0", 0.15), ("Q4_0", 1.0)])
def test_gguf_reproduces_transformers_logits(tmp_path, tokenizer, qtype, tol):
    hf = make_hf_llama(tmp_path, tokenizer, tie=qtype == "Q8_0")
    gguf_path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", hf, tokenizer, qtype)
    out = tmp_path / "converted.safetensors"
    r = runner.invoke(app, ["convert", str(gguf_path), str(out), "--segment-len", "64"])
    assert r.exit_code == 0, r.output
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
    err = (converted_logits(out, tokens) - ref).abs().max().item()
    assert err <= tol, (qtype, err)
    if qtype == "F32":
        assert err <= 1e-4


def test_quantized_gguf_error_shrinks_with_bits(tmp_path, tokenizer):
    """Q8_0 is closer to the float model than Q4_0: the blocks really are dequantized."""
    hf = make_hf_llama(tmp_path, tokenizer)
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens).logits
    errs = {}
    for q in ("Q8_0", "Q4_0"):
        out = tmp_path / f"{q}.safetensors"
        convert_gguf(write_gguf(tmp_path / f"{q}.gguf", hf, tokenizer, q), out, segment_len=64)
        errs[q] = (converted_logits(out, tokens) - ref).abs().max().item()
    assert 0 < errs["Q8_0"] < errs["Q4_0"]


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(24, 8)
    permuted = torch.from_numpy(llama_cpp_permute(w.numpy(), 3))
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rope(permuted, 3), w)


def test_gguf_tokenizer_and_chat_template_kept(tmp_path, tokenizer):
    hf = make_hf_llama(tmp_path, tokenizer)
    out = tmp_path / "c.safetensors"
    convert_gguf(write_gguf(tmp_path / "t.gguf", hf, tokenizer), out, segment_len=64)
    loaded = load_checkpoint(out)
    for text in ["The pass key is 12345. Remember it.", "Call me Ishmael, 1843!", "  spaces\nand lines "]:
        assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
        assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text
    chat = read_header(out).chat
    assert "<|im_start|>" in chat["template"] and chat["eos_token"] == "<|endoftext|>"
    # gates start local-only: the converted model is the original
    assert (loaded.model.gates() < 1e-4).all()


def test_other_architecture_refused(tmp_path, tokenizer):
    hf = make_hf_llama(tmp_path, tokenizer)
    path = write_gguf(tmp_path / "g.gguf", hf, tokenizer, arch="gemma")
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "o.safetensors")])
    assert_one_line_error(r, 2, "gemma", "Llama")


def test_absurd_sizes_refused_before_allocating(tmp_path, tokenizer):
    hf = make_hf_llama(tmp_path, tokenizer)
    path = write_gguf(tmp_path / "g.gguf", hf, tokenizer, block_count=10**6)
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "o.safetensors")])
    assert_one_line_error(r, 2, "block_count", "outside")


def test_tensor_shape_mismatch_named(tmp_path, tokenizer):
    hf = make_hf_llama(tmp_path, tokenizer)
    path = write_gguf(tmp_path / "g.gguf", hf, tokenizer, block_count=1)  # 2 layers of tensors
    with pytest.raises(CheckpointError, match="unexpected tensor|shape"):
        convert_gguf(path, tmp_path / "o.safetensors")


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf at all" * 10])
def test_damaged_or_foreign_files_refused(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "o.safetensors")])
    assert_one_line_error(r, 2, "bad.gguf")


def test_truncated_gguf_refused(tmp_path, tokenizer):
    hf = make_hf_llama(tmp_path, tokenizer)
    path = write_gguf(tmp_path / "g.gguf", hf, tokenizer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "o.safetensors")])
    assert_one_line_error(r, 2, "g.gguf")
