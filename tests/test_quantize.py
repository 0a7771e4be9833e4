"""Quantization: layout, round trips and error bounds."""

from __future__ import annotations

import pytest
import torch

from infini_cli.quantize import (QuantScheme, dequantize_int4, dequantize_int8, dequantize_tensors, quantize_int4,
                                 quantize_int8, quantize_state_dict, relative_error)

# Bounds for Gaussian weights (measured: int8 ~0.9%, int4 g32 ~9%, g64 ~11%, g128 ~12%)
INT8_BOUND = 0.015
INT4_BOUND = {32: 0.11, 64: 0.13, 128: 0.14}


def gaussian(out_f=96, in_f=256, seed=0):
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * 0.02


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


def test_int8_layout_and_error():
    w = gaussian()
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (w.shape[0],)
    assert q.abs().max() <= 127
    assert rel(w, dequantize_int8(q, scale)) < INT8_BOUND


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_layout_and_error(group):
    w = gaussian()
    packed, scale, zero = quantize_int4(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0], w.shape[1] // 2)
    assert scale.shape == zero.shape == (w.shape[0], w.shape[1] // group)
    assert rel(w, dequantize_int4(packed, scale, zero)) < INT4_BOUND[group]


def test_int4_packing_is_exact_on_representable_values():
    # values already on the 16-level grid of each group come back exactly
    codes = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(1)).float()
    codes[:, 0], codes[:, 1] = 0, 15  # pin each group's range so the grid is 0..15
    codes[:, 32], codes[:, 33] = 0, 15
    w = codes * 0.1 - 0.5
    packed, scale, zero = quantize_int4(w, 32)
    torch.testing.assert_close(dequantize_int4(packed, scale, zero), w, rtol=0, atol=1e-6)


def test_state_dict_keeps_norms_gates_and_embeddings_in_float():
    sd = {"embed.weight": gaussian(50, 64), "layers.0.attn.wq.weight": gaussian(64, 64),
          "layers.0.attn_norm.weight": torch.ones(64), "layers.0.attn.gate": torch.zeros(4)}
    stored = quantize_state_dict(sd, QuantScheme(8))
    assert stored["embed.weight"].dtype == torch.float16
    assert stored["layers.0.attn.wq.weight"].dtype == torch.int8
    assert stored["layers.0.attn_norm.weight"].dtype == torch.float32
    assert torch.equal(stored["layers.0.attn.gate"], sd["layers.0.attn.gate"])
    back = dequantize_tensors(stored, torch.float32)
    assert relative_error(sd, back) < INT8_BOUND


def test_int4_falls_back_to_int8_when_groups_do_not_divide():
    sd = {"layers.0.ffn.w2.weight": gaussian(32, 48)}
    stored = quantize_state_dict(sd, QuantScheme(4, 32))
    assert stored["layers.0.ffn.w2.weight"].dtype == torch.int8


# ---------------------------------------------------------------- the int4 decode kernel

needs_int4 = pytest.mark.skipif(not __import__("infini_cli.quantize", fromlist=["x"]).int4_kernel_available(),
                                reason="no weight-only int4 kernel in this torch")


def on_4bit_grid(out_f=64, in_f=128, group=32, seed=0):
    """Weights as a 4-bit file holds them (GGUF Q4_1): 16 levels a group, a float minimum."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out_f, in_f // group, group), generator=gen).float()
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans its range, as Q4_1 makes it
    scale = torch.rand(out_f, in_f // group, 1, generator=gen) * 0.01 + 0.001
    lo = torch.randn(out_f, in_f // group, 1, generator=gen) * 0.02
    return (codes * scale + lo).reshape(out_f, in_f)


@needs_int4
def test_int4_linear_is_exact_on_a_4bit_grid_up_to_bfloat16():
    from infini_cli.quantize import Int4Linear

    w = on_4bit_grid()
    assert Int4Linear.grid_error(w, 32) < 1e-6  # the grid is recovered: codes, scales and minima
    layer = Int4Linear.from_weight(w, 32)
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(1))
    ref = x.bfloat16().float() @ w.T  # the kernel takes bfloat16 activations
    assert rel(ref, layer(x)) < 0.01
    assert layer(x).dtype == torch.float32 and layer(x[None]).shape == (1, 3, w.shape[0])


@needs_int4
def test_decode_kernels_take_int4_only_where_it_loses_nothing():
    from infini_cli.quantize import INT4_MAX_ERROR, Int4Linear, Int8Linear, use_decode_kernels

    model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False), torch.nn.Linear(128, 64, bias=False),
                                torch.nn.Linear(128, 40, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(on_4bit_grid())          # from a 4-bit file: int4
        model[1].weight.copy_(gaussian(64, 128))        # trained in float: int8 (~8% in int4)
        model[2].weight.copy_(on_4bit_grid(40, 128)[:40])  # 40 outputs: not a multiple of 16
    assert Int4Linear.grid_error(gaussian(64, 128), 32) > INT4_MAX_ERROR
    assert Int4Linear.grid_error(gaussian(1024, 128), 32, rows=64) > INT4_MAX_ERROR  # from a sample
    assert use_decode_kernels(model) == {"int4": 1, "int8": 2}
    assert isinstance(model[0], Int4Linear)
    assert isinstance(model[1], Int8Linear) and isinstance(model[2], Int8Linear)


@needs_int4
def test_a_prompt_and_a_token_see_the_same_int4_weights():
    """Many rows go through weights made from the codes (in prompt_dtype), one row through the
    kernel: the same weights either way, up to bfloat16 rounding where that is used."""
    from infini_cli.quantize import DEQUANTIZE_ROWS, Int4Linear, prompt_dtype

    w = gaussian(64, 128)
    layer = Int4Linear.from_weight(w, 32)
    deq = layer.dequantized()
    assert rel(w, deq) < INT4_BOUND[32]
    rows = torch.randn(DEQUANTIZE_ROWS, 128, generator=torch.Generator().manual_seed(3))
    if prompt_dtype() == torch.float32:
        torch.testing.assert_close(layer(rows), rows @ deq.T)
    assert rel(rows @ deq.T, layer(rows)) < 0.01
    assert rel(rows[:2].bfloat16().float() @ deq.T, layer(rows[:2])) < 0.01
