"""Compressive memory of Infini-attention and the explicit stream state.

Per layer and per key/value head the memory is M (d_key x d_value) and z (d_key), both
float32 whatever the weights are: bf16 memories overflow over long inputs. With
sigma(x) = elu(x) + 1:

    read:          A_mem = sigma(Q) M / (sigma(Q) z + eps)
    linear write:  M += sigma(K)^T V
    delta write:   M += sigma(K)^T (V - sigma(K) M / (sigma(K) z + eps))
    both:          z += sum_t sigma(K_t)

Q and K are taken before RoPE. The functions here are pure: they return new tensors, so
the state of an earlier step can be kept, compared or cloned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from .config import ModelConfig

EPS = 1e-6

Weight = Union[None, float, torch.Tensor]


def sigma(x: torch.Tensor) -> torch.Tensor:
    """ELU+1 feature map: positive, so the normaliser sigma(q).z never changes sign."""
    return F.elu(x) + 1.0


def memory_read(q: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Read the memory for grouped queries.

    q: [B, n_kv, N, d_key] (any dtype), M: [B, n_kv, d_key, d_value], z: [B, n_kv, d_key].
    Returns float32 [B, n_kv, N, d_value]; zero while the memory is empty.
    """
    sq = sigma(q.float())
    num = sq @ M
    den = (sq @ z.unsqueeze(-1)) + EPS
    return num / den


def _scaled(x: torch.Tensor, weight: Weight) -> torch.Tensor:
    if weight is None:
        return x
    if isinstance(weight, torch.Tensor):
        # one weight per sequence in the batch
        return x * weight.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return x * float(weight)


def memory_write(
    k: torch.Tensor,
    v: torch.Tensor,
    M: torch.Tensor,
    z: torch.Tensor,
    rule: str,
    weight: Weight = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write one segment's keys and values into the memory; returns new (M, z).

    k, v: [B, n_kv, T, d]. `weight` scales the write (1 = ordinary). With the linear rule a
    write of weight w equals writing the same segment w times, which training uses to make
    a few segments stand for a much longer haystack.
    """
    sk = sigma(k.float())
    vf = v.float()
    if rule == "delta":
        retrieved = (sk @ M) / ((sk @ z.unsqueeze(-1)) + EPS)
        vf = vf - retrieved
    elif rule != "linear":
        raise ValueError(f"unknown memory rule {rule!r}")
    dM = sk.transpose(-1, -2) @ vf
    dz = sk.sum(dim=-2)
    return M + _scaled(dM, weight), z + _scaled(dz, weight)


@dataclass
class StreamState:
    """Everything a stream carries between calls, explicit and never hidden in modules.

    M, z: per layer, the compressive memory (float32).
    k_local, v_local: per layer, the keys (before RoPE) and values of the current,
        unfinished segment: [B, n_kv, t, head_dim], with t < segment_len between calls.
    tokens_seen: tokens consumed so far; segments_written: memory writes so far.
    """

    M: list[torch.Tensor]
    z: list[torch.Tensor]
    k_local: list[torch.Tensor]
    v_local: list[torch.Tensor]
    tokens_seen: int = 0
    segments_written: int = 0

    @classmethod
    def empty(
        cls,
        config: ModelConfig,
        batch_size: int = 1,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "StreamState":
        n, d = config.n_kv_heads, config.head_dim
        L = config.n_layers
        return cls(
            M=[torch.zeros(batch_size, n, d, d, device=device) for _ in range(L)],
            z=[torch.zeros(batch_size, n, d, device=device) for _ in range(L)],
            k_local=[torch.zeros(batch_size, n, 0, d, device=device, dtype=dtype) for _ in range(L)],
            v_local=[torch.zeros(batch_size, n, 0, d, device=device, dtype=dtype) for _ in range(L)],
        )

    @property
    def local_len(self) -> int:
        return self.k_local[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.M[0].shape[0]

    def clone(self) -> "StreamState":
        return StreamState(
            M=[t.clone() for t in self.M],
            z=[t.clone() for t in self.z],
            k_local=[t.clone() for t in self.k_local],
            v_local=[t.clone() for t in self.v_local],
            tokens_seen=self.tokens_seen,
            segments_written=self.segments_written,
        )

    def detach(self) -> "StreamState":
        """Cut the autograd graph (truncated backpropagation through time)."""
        return StreamState(
            M=[t.detach() for t in self.M],
            z=[t.detach() for t in self.z],
            k_local=[t.detach() for t in self.k_local],
            v_local=[t.detach() for t in self.v_local],
            tokens_seen=self.tokens_seen,
            segments_written=self.segments_written,
        )

    def select(self, b: int) -> "StreamState":
        """Stream b of a batch, as a batch of one (views, never written in place)."""
        pick = lambda ts: [t[b:b + 1] for t in ts]  # noqa: E731
        return StreamState(pick(self.M), pick(self.z), pick(self.k_local), pick(self.v_local),
                           self.tokens_seen, self.segments_written)

    def to(self, device: Union[str, torch.device]) -> "StreamState":
        mv = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        return StreamState(mv(self.M), mv(self.z), mv(self.k_local), mv(self.v_local),
                           self.tokens_seen, self.segments_written)

    def memory_bytes(self) -> int:
        """Bytes of the compressive memory alone: constant whatever the length."""
        return sum(t.numel() * t.element_size() for t in (*self.M, *self.z))

    def nbytes(self) -> int:
        """Bytes of the whole state, the unfinished segment's keys and values included."""
        local = sum(t.numel() * t.element_size() for t in (*self.k_local, *self.v_local))
        return self.memory_bytes() + local

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor mapping, for saving with safetensors."""
        out: dict[str, torch.Tensor] = {}
        for i in range(len(self.M)):
            out[f"{i}.M"] = self.M[i]
            out[f"{i}.z"] = self.z[i]
            out[f"{i}.k_local"] = self.k_local[i]
            out[f"{i}.v_local"] = self.v_local[i]
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_layers: int,
                     tokens_seen: int, segments_written: int) -> "StreamState":
        get = lambda name: [tensors[f"{i}.{name}"] for i in range(n_layers)]  # noqa: E731
        return cls(get("M"), get("z"), get("k_local"), get("v_local"), tokens_seen, segments_written)


def commit_segment(state: StreamState, rule: str, weight: Weight = None) -> StreamState:
    """Write the current segment's keys and values into every layer's memory and clear them."""
    M, z = [], []
    for i in range(len(state.M)):
        m, zz = memory_write(state.k_local[i], state.v_local[i], state.M[i], state.z[i], rule, weight)
        M.append(m)
        z.append(zz)
    empty = lambda t: t[:, :, :0]  # noqa: E731
    return StreamState(
        M=M,
        z=z,
        k_local=[empty(t) for t in state.k_local],
        v_local=[empty(t) for t in state.v_local],
        tokens_seen=state.tokens_seen,
        segments_written=state.segments_written + 1,
    )
