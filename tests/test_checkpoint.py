"""One-file checkpoints: exact round trips, quantized tolerances, clean refusals."""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
import torch

from infini_cli.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from infini_cli.memory import StreamState
from infini_cli.quantize import QuantScheme, int8_kernel_available
from infini_cli.stream import feed


def logits_of(model, tokens):
    out, _ = feed(model, StreamState.empty(model.config), tokens)
    return out


def test_float_round_trip_is_exact(tmp_path, tiny_model, tokenizer):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, tokenizer, training={"steps": 7})
    loaded = load_checkpoint(path)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert loaded.config == tiny_model.config
    assert loaded.tokenizer.encode("The sky is blue.") == tokenizer.encode("The sky is blue.")
    assert loaded.header.training == {"steps": 7}
    assert loaded.header.metadata["format_version"] == "1"


@pytest.mark.parametrize("scheme,bound", [(QuantScheme(8), 0.02), (QuantScheme(4, 32), 0.15)])
def test_quantized_round_trip(tmp_path, tiny_model, tokenizer, scheme, bound):
    """Saving a quantized file twice is exact; its logits stay within `bound` (relative)."""
    path = save_checkpoint(tmp_path / "q.safetensors", tiny_model, tokenizer, scheme)
    loaded = load_checkpoint(path)
    again = save_checkpoint(tmp_path / "q2.safetensors", loaded.model, tokenizer, scheme)
    reloaded = load_checkpoint(again)
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(reloaded.model.state_dict()[k], v, rtol=0, atol=1e-6)
    tokens = list(range(40))
    ref, got = logits_of(tiny_model, tokens), logits_of(loaded.model, tokens)
    assert ((got - ref).norm() / ref.norm()).item() < bound
    assert read_header(path).quant == scheme


def test_quantized_file_is_smaller(tmp_path, tiny_model, tokenizer):
    f = save_checkpoint(tmp_path / "f.safetensors", tiny_model, tokenizer).stat().st_size
    q8 = save_checkpoint(tmp_path / "8.safetensors", tiny_model, tokenizer, QuantScheme(8)).stat().st_size
    assert q8 < f


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_header(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth"])
def test_pickle_files_are_refused(tmp_path, suffix):
    p = tmp_path / f"model{suffix}"
    p.write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="refused"):
        read_header(p)


def test_truncated_file(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(cut)


def test_broken_header(tmp_path):
    p = tmp_path / "broken.safetensors"
    p.write_bytes(struct.pack("<Q", 10) + b"{not json!" + b"\0" * 10)
    with pytest.raises(CheckpointError, match="broken safetensors header"):
        read_header(p)


def test_not_safetensors(tmp_path):
    p = tmp_path / "text.safetensors"
    p.write_text("hello, I am a text file and nothing else " * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_header(p)


def test_plain_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="not an infini checkpoint"):
        read_header(p)


def test_loads_on_meta_then_assigns(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert json.loads(loaded.header.metadata["config"])["n_layers"] == loaded.config.n_layers


def test_bfloat16_load_runs_with_float32_norms(tiny_checkpoint, tiny_model):
    """CUDA's default dtype: norms and gates stay float32, activations stay bfloat16."""
    loaded = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16)
    assert loaded.model.layers[0].attn_norm.weight.dtype == torch.float32
    tokens = list(range(40))
    with torch.inference_mode():
        out, _ = feed(loaded.model, StreamState.empty(loaded.config, dtype=torch.bfloat16), tokens)
        ref = logits_of(tiny_model, tokens)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_int8_linears_at_load(tiny_checkpoint, tiny_model):
    from infini_cli.quantize import Int8Linear, int8_kernel_available

    if not int8_kernel_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    loaded = load_checkpoint(tiny_checkpoint, kernels="int8")
    assert isinstance(loaded.model.layers[0].attn.wqkv, Int8Linear)
    tokens = list(range(40))
    with torch.inference_mode():
        out = logits_of(loaded.model, tokens)
        ref = logits_of(tiny_model, tokens)
    assert ((out - ref).norm() / ref.norm()).item() < 0.03


def test_decode_kernels_at_load_and_an_unknown_choice(tiny_checkpoint, tiny_model):
    from infini_cli.quantize import int8_kernel_available

    if not int8_kernel_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    loaded = load_checkpoint(tiny_checkpoint, kernels="int4")  # int4 where lossless, int8 elsewhere
    tokens = list(range(40))
    with torch.inference_mode():
        out = logits_of(loaded.model, tokens)
        ref = logits_of(tiny_model, tokens)
    assert ((out - ref).norm() / ref.norm()).item() < 0.03
    with pytest.raises(ValueError, match="kernels"):
        load_checkpoint(tiny_checkpoint, kernels="int3")


@pytest.mark.parametrize("bits,kernels", [(8, "int8"), (8, "int4"), (4, "int4")])
def test_kernels_built_layer_by_layer_equal_those_of_the_float_model(tmp_path, tokenizer, tiny_model, bits, kernels):
    """The loader makes each layer's float weight only when its kernel is built: the kernels
    are the ones made from the whole float model, buffer for buffer."""
    from infini_cli.quantize import int8_kernel_available, use_decode_kernels, use_int8_linears

    if not int8_kernel_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    path = tmp_path / "q.safetensors"
    save_checkpoint(path, tiny_model, tokenizer, quant=QuantScheme(bits, 16 if bits == 4 else None))
    want = load_checkpoint(path).model
    (use_int8_linears if kernels == "int8" else use_decode_kernels)(want)
    got = load_checkpoint(path, kernels=kernels).model
    assert not any(t.is_meta for t in (*got.parameters(), *got.buffers()))
    a, b = want.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_saved_checkpoint_has_a_new_files_mode(tmp_path, tiny_model, tokenizer):
    """Readable by others as any new file is under the umask (safetensors alone writes 0o600)."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, tokenizer)
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def _rewrite_header(src, dst, edit):
    """Copy a checkpoint with its JSON header changed by edit(header) (data bytes kept)."""
    import json as _json
    import struct as _struct

    raw = src.read_bytes()
    (n,) = _struct.unpack("<Q", raw[:8])
    header = _json.loads(raw[8:8 + n])
    edit(header)
    new = _json.dumps(header).encode()
    dst.write_bytes(_struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return dst


@pytest.mark.parametrize("edit,words", [
    (lambda h: h.__setitem__("__metadata__", ["not", "a", "dict"]), "__metadata__"),
    (lambda h: h.__setitem__("layers.0.attn.gate", "oops"), "broken header entry"),
    (lambda h: h["norm.weight"].__setitem__("data_offsets", ["0", "4"]), "broken header entry"),
    (lambda h: h["norm.weight"].pop("dtype"), "broken header entry"),
    (lambda h: h["norm.weight"].__setitem__("shape", [10 ** 6, 10 ** 6]), "byte range"),
    (lambda h: h["layers.0.attn.wqkv.weight"].__setitem__("dtype", "I32"), "role needs"),
    (lambda h: h["__metadata__"].__setitem__("training", "[1, 2]"), "training record"),
])
def test_untrusted_headers_fail_in_one_line(tmp_path, tiny_checkpoint, edit, words):
    from typer.testing import CliRunner

    from infini_cli.cli import app

    bad = _rewrite_header(tiny_checkpoint, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=words):
        read_header(bad)
    r = CliRunner().invoke(app, ["info", str(bad)])
    assert r.exit_code == 2 and "Traceback" not in r.output and "bad.safetensors" in r.output


@pytest.mark.parametrize("field,value", [("n_kv_heads", 0), ("n_layers", 10 ** 6), ("segment_len", 10 ** 9),
                                         ("d_model", "128"), ("rope_theta", float("nan"))])
def test_configs_with_absurd_sizes_are_refused_before_allocating(tmp_path, tiny_checkpoint, field, value):
    import json as _json

    def edit(h):
        cfg = _json.loads(h["__metadata__"]["config"])
        cfg[field] = value
        h["__metadata__"]["config"] = _json.dumps(cfg)

    bad = _rewrite_header(tiny_checkpoint, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=field):
        read_header(bad)


@pytest.mark.parametrize("bits,kernels", [(None, "float"), (8, "float"), (8, "int8")])
def test_checkpoints_with_separate_projections_still_load(tmp_path, tokenizer, tiny_model, bits, kernels):
    """Files written before wq/wk/wv and w1/w3 were fused load into the fused model unchanged."""
    from infini_cli.checkpoint import save_tensors
    from infini_cli.quantize import quantize_state_dict

    cfg = tiny_model.config
    H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    legacy = {}
    for k, v in tiny_model.state_dict().items():
        if k.endswith("attn.wqkv.weight"):
            for name, part in zip(("wq", "wk", "wv"), v.split((H * D, G * D, G * D))):
                legacy[k.replace("wqkv", name)] = part.clone()
        elif k.endswith("ffn.w13.weight"):
            for name, part in zip(("w1", "w3"), v.chunk(2)):
                legacy[k.replace("w13", name)] = part.clone()
        else:
            legacy[k] = v.clone()
    assert not any("wqkv" in k or "w13" in k for k in legacy)
    scheme = QuantScheme(bits)
    old = tmp_path / "legacy.safetensors"
    save_tensors(old, quantize_state_dict(legacy, scheme), cfg, tokenizer.to_json(), scheme, {})
    new = tmp_path / "fused.safetensors"
    save_checkpoint(new, tiny_model, tokenizer, quant=scheme)
    tokens = list(range(3, 3 + 2 * cfg.segment_len))
    if kernels != "float" and not int8_kernel_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    a, _ = feed(load_checkpoint(old, kernels=kernels).model, StreamState.empty(cfg), tokens)
    b, _ = feed(load_checkpoint(new, kernels=kernels).model, StreamState.empty(cfg), tokens)
    assert torch.equal(a, b)
