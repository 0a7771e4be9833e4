"""The decoding step compiled ahead of time: the eager Decoder's logits, state and tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from infini_cli import decode_compiled
from infini_cli.config import preset
from infini_cli.decode import Decoder
from infini_cli.decode_compiled import (CompiledDecoder, build_package, load_compiled, missing_note, package_path,
                                        prepare)
from infini_cli.memory import StreamState
from infini_cli.quantize import (dequantize_int4, int4_kernel_available, int8_kernel_available, quantize_int4,
                                 use_decode_kernels)
from infini_cli.stream import feed, generate

from .conftest import random_model
from .test_decode import tokens_for

pytestmark = pytest.mark.skipif(not int8_kernel_available(), reason="no weight-only int8 kernel in this torch")


def writer_like(name: str = "tiny") -> torch.nn.Module:
    """A tiny model laid out as the writer decodes: its layers' weights on a 4-bit grid (as
    from a Q4 GGUF) take the int4 kernel where this torch has it, the output layer int8."""
    cfg = dataclasses.replace(preset(name), d_model=64, ffn_dim=128)  # the int4 kernel's group of 32
    model = random_model(cfg, seed=4)
    with torch.no_grad():
        for m in model.layers.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(dequantize_int4(*quantize_int4(m.weight, 32)))
    counts = use_decode_kernels(model)
    assert counts == ({"int4": 4 * cfg.n_layers, "int8": 1} if int4_kernel_available() else
                      {"int4": 0, "int8": 4 * cfg.n_layers + 1})
    return model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny package for the module (compiling takes ~15 s): (model, compiled step)."""
    model = writer_like()
    path = tmp_path_factory.mktemp("compiled") / "step.pt2"
    try:
        build_package(model, path)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"this machine cannot compile ahead of time: {type(e).__name__}: {e}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFINI_COMPILED_DECODE", "1")
        compiled = load_compiled(model, path)
    assert compiled is not None
    return model, compiled


@pytest.mark.slow  # builds a tiny package (~15 s, once for the module)
@pytest.mark.parametrize("use_memory", [True, False])
def test_compiled_steps_equal_the_eager_decoder_across_segments(built, use_memory):
    """From mid-segment over three segment boundaries (memory empty, then written; buffers grow).
    Where attention runs in bf16 the package attends over the whole buffer with a mask and the
    eager decoder over the filled part: bf16's rounding apart (1-2 units of the logits' last
    bf16 place here), which stays that small and does not grow."""
    model, compiled = built
    cfg = model.config
    S = cfg.segment_len
    toks = tokens_for(cfg, 3 * S + 5)
    start = S // 2 + 3
    _, state = feed(model, StreamState.empty(cfg), toks[:start], use_memory=use_memory)
    eager = Decoder(model, state, use_memory, reserve=2, attention_dtype=compiled.attention_dtype)
    fast = CompiledDecoder(compiled, model, state, use_memory, reserve=2)
    for t in toks[start:]:
        want = eager.step(t.view(1))
        got = fast.step(t.view(1))
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    a, b = fast.to_state(), eager.to_state()
    assert (a.local_len, a.tokens_seen, a.segments_written) == (b.local_len, b.tokens_seen, 3)
    for x, y in zip(a.M + a.z + a.k_local + a.v_local, b.M + b.z + b.k_local + b.v_local):
        assert x.dtype == y.dtype and ((x - y).norm() / y.norm().clamp(min=1e-6)).item() < 2e-2


@pytest.mark.slow  # builds a tiny package (~15 s, once for the module)
def test_generate_through_the_package_gives_the_eager_tokens(built):
    model, compiled = built
    cfg = model.config
    prompt = [int(t) for t in tokens_for(cfg, cfg.segment_len + 3, seed=7)]
    state = StreamState.empty(cfg)
    eager = list(generate(model, state, prompt, 2 * cfg.segment_len))
    fast = list(generate(model, state, prompt, 2 * cfg.segment_len, compiled=compiled))
    assert fast == eager


@pytest.mark.slow  # builds a tiny package (~15 s, once for the module)
def test_a_batch_decodes_eagerly(built):
    model, compiled = built
    assert not compiled.serves(StreamState.empty(model.config, batch_size=2))
    assert compiled.serves(StreamState.empty(model.config))


@pytest.mark.slow  # builds a tiny package (~15 s, once for the module)
def test_no_package_is_used_when_off_missing_or_for_another_layout(built, monkeypatch, tmp_path):
    model, compiled = built
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "1")
    assert load_compiled(model, tmp_path / "absent.pt2") is None
    assert load_compiled(model) is None  # nothing built under this test's data directory
    other = writer_like("tiny-delta")
    assert package_path(other) != package_path(model)  # another config: another package
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "0")
    assert load_compiled(model, compiled.path) is None
    assert prepare(model) == (None, "compiled decoding is off ($INFINI_COMPILED_DECODE=0)")


def test_prepare_builds_once_and_reports_a_failure_in_a_line(monkeypatch):
    """Built where missing or where what is there does not load; a failure in one line, and
    ask stops suggesting it."""
    model = writer_like()
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "1")
    calls = []

    def fail(m, path):
        calls.append(path)
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(decode_compiled, "build_package", fail)
    assert "`infini pull w` compiles" in missing_note(model, "w")  # not built: ask suggests it
    assert prepare(model) == (None, "RuntimeError: no C++ compiler found")
    assert missing_note(model, "w") is None  # it failed here: not suggested again
    def build(m, path):
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    monkeypatch.setattr(decode_compiled, "build_package", build)
    path, why = prepare(model)
    assert (path, why) == (package_path(model), "") and path.is_file()
    assert not path.with_suffix(".failed").exists()
    assert prepare(model) == (path, "") and len(calls) == 3  # built, but it does not load: built again
    monkeypatch.setattr(decode_compiled, "load_compiled", lambda m, p: object())  # as if it loaded
    assert prepare(model) == (path, "") and len(calls) == 3  # built: not again
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "0")
    assert missing_note(model, "w") is None
