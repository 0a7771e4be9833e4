"""The compressive memory against a naive, per-token float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infini_cli.memory import EPS, memory_read, memory_write


def naive_sigma(x):
    return F.elu(x) + 1


def naive_read(q, M, z):
    # q [B, G, N, dk]; one query vector at a time
    out = torch.zeros(*q.shape[:-1], M.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for g in range(q.shape[1]):
            for n in range(q.shape[2]):
                s = naive_sigma(q[b, g, n])
                out[b, g, n] = (s @ M[b, g]) / (s @ z[b, g] + EPS)
    return out


def naive_write(k, v, M, z, rule):
    """Per-token accumulation; the delta rule retrieves with the memory before the segment."""
    M_new, z_new = M.clone(), z.clone()
    for b in range(k.shape[0]):
        for g in range(k.shape[1]):
            for t in range(k.shape[2]):
                s = naive_sigma(k[b, g, t])
                value = v[b, g, t]
                if rule == "delta":
                    value = value - (s @ M[b, g]) / (s @ z[b, g] + EPS)
                M_new[b, g] += torch.outer(s, value)
                z_new[b, g] += s
    return M_new, z_new


def random_memory(B=2, G=3, dk=8, dv=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(B, G, dk, dv, generator=gen, dtype=torch.float64)
    z = torch.rand(B, G, dk, generator=gen, dtype=torch.float64) * 5 + 1
    return M, z, gen


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_write_matches_naive_reference(rule):
    M, z, gen = random_memory()
    k = torch.randn(2, 3, 11, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, 11, 8, generator=gen, dtype=torch.float64)
    ref_M, ref_z = naive_write(k, v, M, z, rule)
    got_M, got_z = memory_write(k, v, M.float(), z.float(), rule)
    assert got_M.dtype == torch.float32 and got_z.dtype == torch.float32
    torch.testing.assert_close(got_M.double(), ref_M, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_z.double(), ref_z, rtol=1e-5, atol=1e-4)


def test_read_matches_naive_reference():
    M, z, gen = random_memory()
    q = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(memory_read(q, M.float(), z.float()).double(), naive_read(q, M, z),
                               rtol=1e-5, atol=1e-5)


def test_empty_memory_reads_zero():
    q = torch.randn(1, 2, 4, 8)
    out = memory_read(q, torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8))
    assert torch.equal(out, torch.zeros_like(out))


def test_linear_write_weight_equals_repeated_writes():
    """Training's length amplification rests on this identity."""
    M, z, gen = random_memory()
    M, z = M.float(), z.float()
    k = torch.randn(2, 3, 5, 8, generator=gen)
    v = torch.randn(2, 3, 5, 8, generator=gen)
    M3, z3 = M, z
    for _ in range(3):
        M3, z3 = memory_write(k, v, M3, z3, "linear")
    Mw, zw = memory_write(k, v, M, z, "linear", weight=3.0)
    torch.testing.assert_close(Mw, M3, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(zw, z3, rtol=1e-5, atol=1e-4)
    # per-sequence weights: sequence 0 written once, sequence 1 three times
    Mb, _ = memory_write(k, v, M, z, "linear", weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(Mb[1], M3[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(Mb[0], memory_write(k, v, M, z, "linear")[0][0], rtol=1e-5, atol=1e-5)


def test_delta_rule_does_not_re_add_what_memory_holds():
    """Writing the same segment twice: linear doubles M, delta adds (almost) nothing the second time."""
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(1, 1, 4, 16, generator=gen) * 3
    v = torch.randn(1, 1, 4, 16, generator=gen)
    M0, z0 = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16)
    M1, z1 = memory_write(k, v, M0, z0, "delta")
    M2, _ = memory_write(k, v, M1, z1, "delta")
    L1, lz1 = memory_write(k, v, M0, z0, "linear")
    L2, _ = memory_write(k, v, L1, lz1, "linear")
    assert (L2 - L1).norm() > 0.9 * L1.norm()
    assert (M2 - M1).norm() < 0.6 * M1.norm()
