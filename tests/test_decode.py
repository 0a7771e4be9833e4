"""The decoder: one token at a time gives the general forward's logits and state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from infini_cli.config import preset
from infini_cli.decode import Decoder
from infini_cli.memory import StreamState
from infini_cli.stream import feed, generate, greedy_batch

from .conftest import random_model


def tokens_for(cfg, n, seed=2):
    return torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def states_equal(a: StreamState, b: StreamState) -> None:
    assert (a.tokens_seen, a.segments_written, a.local_len) == (b.tokens_seen, b.segments_written, b.local_len)
    for x, y in zip(a.M + a.z + a.k_local + a.v_local, b.M + b.z + b.k_local + b.v_local):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "tiny-delta"])
@pytest.mark.parametrize("use_memory", [True, False])
def test_steps_equal_feeding_one_token_at_a_time_across_segments(name, use_memory):
    """From mid-segment, over three segment boundaries (memory empty, then written)."""
    cfg = preset(name)
    model = random_model(cfg, seed=1)
    S = cfg.segment_len
    toks = tokens_for(cfg, 3 * S + 5)
    start = S // 2 + 3
    _, ref = feed(model, StreamState.empty(cfg), toks[:start], use_memory=use_memory)
    decoder = Decoder(model, ref, use_memory, reserve=2, attention_dtype=torch.float32)  # buffers must grow
    for t in toks[start:]:
        want, ref = feed(model, ref, [int(t)], logits="last", use_memory=use_memory)
        got = decoder.step(t.view(1))
        torch.testing.assert_close(got, want[:, -1], rtol=1e-5, atol=1e-6)
    states_equal(decoder.to_state(), ref)
    assert ref.segments_written == 3


@pytest.mark.parametrize("kernels", ["int8", "int4"])
def test_steps_through_quantized_kernels_equal_their_layers_forward(kernels):
    """The decoder calls the int8/int4 kernels straight: the numbers of the layers' own forward."""
    from infini_cli.quantize import (dequantize_int4, int4_kernel_available, int8_kernel_available, quantize_int4,
                                     use_decode_kernels, use_int8_linears)

    if not int8_kernel_available() or (kernels == "int4" and not int4_kernel_available()):
        pytest.skip(f"no weight-only {kernels} kernel in this torch")
    cfg = dataclasses.replace(preset("tiny"), d_model=64, ffn_dim=128)  # the int4 kernel's group of 32
    model = random_model(cfg, seed=4)
    if kernels == "int8":
        use_int8_linears(model)
    else:
        with torch.no_grad():  # weights on a 4-bit grid (as from a Q4 GGUF): the int4 kernel takes them
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
                    m.weight.copy_(dequantize_int4(*quantize_int4(m.weight, 32)))
        assert use_decode_kernels(model)["int4"] == 4 * cfg.n_layers
    toks = tokens_for(cfg, cfg.segment_len + 6)
    _, ref = feed(model, StreamState.empty(cfg), toks[:5])
    decoder = Decoder(model, ref, reserve=2, attention_dtype=torch.float32)
    for t in toks[5:]:
        want, ref = feed(model, ref, [int(t)], logits="last")
        assert torch.equal(decoder.step(t.view(1)), want[:, -1])


def test_a_batch_of_streams_decodes_each_as_alone():
    cfg = preset("tiny-delta")
    model = random_model(cfg, seed=4)
    prompts = torch.stack([tokens_for(cfg, 2 * cfg.segment_len + 7, seed=s) for s in (5, 6)])
    _, state = feed(model, StreamState.empty(cfg, batch_size=2), prompts)
    both = greedy_batch(model, state, prompts[:, -1], 12)
    for b in range(2):
        alone = greedy_batch(model, state.select(b), prompts[b:b + 1, -1], 12)
        assert both[b].tolist() == alone[0].tolist()


def test_the_callers_state_is_not_modified_and_to_state_is_a_copy():
    cfg = preset("tiny")
    model = random_model(cfg, seed=2)
    _, state = feed(model, StreamState.empty(cfg), tokens_for(cfg, 9))
    before = state.clone()
    decoder = Decoder(model, state)
    decoder.step(torch.tensor([3]))
    snapshot = decoder.to_state()
    kept = snapshot.clone()
    decoder.step(torch.tensor([4]))
    states_equal(state, before)
    states_equal(snapshot, kept)
    assert snapshot.local_len == 10


def test_generate_equals_greedy_recomputation_from_scratch(monkeypatch):
    """Each token generate yields is the argmax of a fresh forward over everything before it
    (attention in float32 as the forward's: bf16 attention may break a near tie)."""
    monkeypatch.setattr("infini_cli.decode.attention_dtype_for", lambda dtype, device: dtype)
    cfg = dataclasses.replace(preset("tiny"), segment_len=64)
    model = random_model(cfg, seed=7)
    prompt = tokens_for(cfg, 20).tolist()
    got = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=30))
    seq = list(prompt)
    for t in got:
        logits, _ = feed(model, StreamState.empty(cfg), seq, logits="last")
        assert t == int(logits[0, -1].argmax())
        seq.append(t)


def test_a_bfloat16_model_decodes_in_bfloat16():
    cfg = preset("tiny")
    model = random_model(cfg, seed=3).to(torch.bfloat16)
    for block in model.layers:  # norms stay float32 in checkpoints
        block.attn_norm.float(), block.ffn_norm.float()
    _, state = feed(model, StreamState.empty(cfg, dtype=torch.bfloat16), tokens_for(cfg, 5))
    want, _ = feed(model, state, [7], logits="last")
    got = Decoder(model, state).step(torch.tensor([7]))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want[:, -1], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("use_memory", [True, False])
def test_attention_in_bfloat16_stays_close_to_the_float32_forward(use_memory):
    """Where the CPU multiplies bf16 natively, a float32 model attends in bf16 when decoding
    (its rotated keys and values kept in bf16, the state's in float32): logits within bf16's
    rounding of the general forward, over segment boundaries; the state handed back exact."""
    from infini_cli.decode import attention_dtype_for
    from infini_cli.quantize import prompt_dtype

    want_dtype = torch.bfloat16 if prompt_dtype() == torch.bfloat16 else torch.float32
    assert attention_dtype_for(torch.float32, torch.device("cpu")) == want_dtype
    assert attention_dtype_for(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    cfg = preset("tiny-delta")
    model = random_model(cfg, seed=2)
    toks = tokens_for(cfg, 2 * cfg.segment_len + 4)
    _, ref = feed(model, StreamState.empty(cfg), toks[:6], use_memory=use_memory)
    decoder = Decoder(model, ref, use_memory, reserve=2, attention_dtype=torch.bfloat16)
    for t in toks[6:]:
        want, ref = feed(model, ref, [int(t)], logits="last", use_memory=use_memory)
        got = decoder.step(t.view(1))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want[:, -1], rtol=2e-2, atol=2e-2)
    # the state's keys and values (and the memory written from them) are float32 and move
    # only as far as the hidden states did
    got_state = decoder.to_state()
    assert got_state.local_len == ref.local_len and got_state.segments_written == ref.segments_written == 2
    for x, y in zip(got_state.M + got_state.k_local + got_state.v_local, ref.M + ref.k_local + ref.v_local):
        assert x.dtype == torch.float32
        assert ((x - y).norm() / y.norm().clamp(min=1e-6)).item() < 2e-2
