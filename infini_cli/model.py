"""The Infini-Transformer: Llama-style blocks with Infini-attention in every layer.

The forward pass computes at most one segment (or the rest of the current one): the
stream module owns the loops and the segment boundaries. Shapes: B batch, T new tokens,
P tokens already in the current segment, H query heads, G key/value heads, D head_dim.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .memory import StreamState, memory_read

LogitsMode = Literal["all", "last", "none", "hidden"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32 and not torch.is_grad_enabled():
            # one call instead of seven (it counts when decoding a token at a time); the
            # same float32 numbers, bit for bit, as the lines below
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # normalise in float32 as Llama does, so bf16 weights keep the same numerics
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # checkpoints keep norm weights in float32 whatever the compute dtype: cast back, or a
        # bf16 model's activations would turn float32 here and meet bf16 linear weights
        return (self.weight * xf.to(x.dtype)).to(x.dtype)


@lru_cache(maxsize=16)
def _rope_table(n_pos: int, dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # cached across calls, so never an inference tensor: training may reuse it
    with torch.inference_mode(False):
        return _make_rope_table(n_pos, dim, theta, device)


def _make_rope_table(n_pos: int, dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin [n_pos, D]: rotate_half(x) * sin == swap_halves(x) * signed_sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    freqs = torch.outer(torch.arange(n_pos, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # [n_pos, D], Llama's half-split layout
    sin = emb.sin()
    half = dim // 2
    return emb.cos(), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, start: int, theta: float, table_len: int) -> torch.Tensor:
    """RoPE for x [B, heads, T, D] at positions start..start+T-1 (restarting every segment).

    x * cos + rotate_half(x) * sin, with rotate_half's negation folded into the table: the same
    products, two fewer kernels per call (ingest runs two calls per layer per segment).
    """
    T, D = x.shape[-2], x.shape[-1]
    cos, sin = _rope_table(table_len, D, theta, x.device)
    cos = cos[start:start + T].to(x.dtype)
    sin = sin[start:start + T].to(x.dtype)
    return torch.addcmul(x * cos, _swap_halves(x), sin)


def _sdpa_has_gqa() -> bool:
    """scaled_dot_product_attention(enable_gqa=True) (torch >= 2.5) reads grouped K/V in place."""
    try:
        q, kv = torch.zeros(1, 2, 1, 4), torch.zeros(1, 1, 1, 4)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


_SDPA_GQA = _sdpa_has_gqa()


# Checkpoints written before the projections were fused hold wq/wk/wv and w1/w3 separately;
# their rows are concatenated in this order (per-output-channel quantization is per row, so
# the fused int8 weight of a converted checkpoint is the concatenation of the separate ones).
LEGACY_PROJECTIONS = {"wqkv.weight": ("wq.weight", "wk.weight", "wv.weight"), "w13.weight": ("w1.weight", "w3.weight")}


def fuse_legacy_projections(state_dict: dict, prefix: str = "") -> dict:
    """Rename separate projection weights (wq, wk, wv; w1, w3) to the fused ones, in place, for
    every module under `prefix` (a whole model's state dict with prefix ""); returns it."""
    for fused, parts in LEGACY_PROJECTIONS.items():
        firsts = [k for k in list(state_dict) if k.startswith(prefix) and k.endswith("." + parts[0])
                  or k == prefix + parts[0]]
        for first in firsts:
            base = first[: -len(parts[0])]
            names = [base + p for p in parts]
            if all(n in state_dict for n in names):
                state_dict[base + fused] = torch.cat([state_dict.pop(n) for n in names], dim=0)
    return state_dict


class InfiniAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, D = config.d_model, config.head_dim
        # Q, K and V in one product (gpt-fast's wqkv): one kernel instead of three per segment
        self.wqkv = nn.Linear(d, (config.n_heads + 2 * config.n_kv_heads) * D, bias=False)
        self.wo = nn.Linear(config.n_heads * D, d, bias=False)
        self._register_load_state_dict_pre_hook(lambda sd, prefix, *_: fuse_legacy_projections(sd, prefix))
        # One learned mixing logit per query head: sigmoid(gate) of the output from memory.
        self.gate = nn.Parameter(torch.full((config.n_heads,), config.gate_init))

    def forward(
        self,
        x: torch.Tensor,
        M: torch.Tensor,
        z: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        use_memory: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        B, T, _ = x.shape
        H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        P = k_cache.shape[2]

        q, k, v = self.wqkv(x).split((H * D, G * D, G * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, G, D).transpose(1, 2)  # [B, G, T, D]
        v = v.view(B, T, G, D).transpose(1, 2)  # [B, G, T, D]

        # the segment's keys and values, before RoPE: the memory is written from these
        k_seg = torch.cat((k_cache, k), dim=2) if P else k
        v_seg = torch.cat((v_cache, v), dim=2) if P else v

        # local causal attention inside the segment, positions restarting at 0
        table = cfg.segment_len
        q_rot = apply_rope(q, P, cfg.rope_theta, table)
        k_rot = apply_rope(k_seg, 0, cfg.rope_theta, table)
        # query head h uses key/value head h // group_size, exactly as Llama's repeat_kv; SDPA's
        # enable_gqa does that mapping without copying K/V (same numbers, fewer kernels)
        if _SDPA_GQA and cfg.group_size > 1:
            k_rep, v_rep, gqa = k_rot, v_seg, {"enable_gqa": True}
        else:
            k_rep = k_rot.repeat_interleave(cfg.group_size, dim=1)
            v_rep = v_seg.repeat_interleave(cfg.group_size, dim=1)
            gqa = {}
        if P == 0:
            local = F.scaled_dot_product_attention(q_rot, k_rep, v_rep, is_causal=T > 1, **gqa)
        elif T == 1:
            local = F.scaled_dot_product_attention(q_rot, k_rep, v_rep, **gqa)
        else:
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            local = F.scaled_dot_product_attention(q_rot, k_rep, v_rep, attn_mask=mask, **gqa)

        if use_memory:
            # grouped read: query heads of one group read their key/value head's memory
            qg = q.reshape(B, G, cfg.group_size * T, D)
            mem = memory_read(qg, M, z).reshape(B, H, T, D).to(local.dtype)
            g = torch.sigmoid(self.gate.float()).to(local.dtype).view(1, H, 1, 1)
            out = torch.lerp(local, mem, g)  # g * mem + (1 - g) * local, in one kernel
        else:
            out = local

        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.wo(out), k_seg, v_seg


class FeedForward(nn.Module):
    """SwiGLU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # the gate (w1) and up (w3) projections in one product: [w1; w3]
        self.w13 = nn.Linear(config.d_model, 2 * config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.d_model, bias=False)
        self._register_load_state_dict_pre_hook(lambda sd, prefix, *_: fuse_legacy_projections(sd, prefix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = InfiniAttention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = FeedForward(config)


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """nn.Embedding, not initialised when built on the meta device (to receive a checkpoint's
    weights): its normal_ there imports torch's Python op references, ~1.2 s of every command
    that loads a model."""
    if torch.empty(0).is_meta:
        return nn.Embedding(vocab_size, dim, _weight=torch.empty(vocab_size, dim))
    return nn.Embedding(vocab_size, dim)


class InfiniTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def init_weights(self, seed: Optional[int] = None) -> "InfiniTransformer":
        """GPT-2 style init; residual output projections scaled by depth."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("gate"):
                nn.init.constant_(p, self.config.gate_init)
            elif "norm" in name:
                nn.init.ones_(p)
            else:
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("wo.weight", "w2.weight")) else std
                # fused projections are drawn part by part, in the order the separate ones were,
                # so a seed gives the same model as before the fusion (recipes reproduce)
                rows = self._fused_rows(name) or [p.shape[0]]
                with torch.no_grad():
                    p.copy_(torch.cat([torch.randn((r, *p.shape[1:]), generator=gen) for r in rows]) * s)
        return self

    def _fused_rows(self, name: str) -> Optional[list[int]]:
        c = self.config
        if name.endswith("wqkv.weight"):
            return [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim]
        if name.endswith("w13.weight"):
            return [c.ffn_dim, c.ffn_dim]
        return None

    def gates(self) -> torch.Tensor:
        """[n_layers, n_heads]: the share of each head's output taken from memory."""
        return torch.stack([torch.sigmoid(b.attn.gate.detach().float()) for b in self.layers])

    def forward(
        self,
        tokens: torch.Tensor,
        state: StreamState,
        logits: LogitsMode = "all",
        use_memory: bool = True,
    ) -> tuple[Optional[torch.Tensor], StreamState]:
        """Run tokens [B, T] that fit in the current segment; returns (logits, new state).

        The state's memory is read, never written, here: the stream module writes it once the
        segment is full. logits="last" or "none" skips the vocabulary projection where it is
        not needed, which is most of ingest.
        """
        B, T = tokens.shape
        room = self.config.segment_len - state.local_len
        if T > room:
            raise ValueError(f"{T} tokens do not fit in the current segment ({room} positions left)")
        h = self.embed(tokens)
        k_new, v_new = [], []
        for i, block in enumerate(self.layers):
            a, k_seg, v_seg = block.attn(block.attn_norm(h), state.M[i], state.z[i],
                                         state.k_local[i], state.v_local[i], use_memory)
            h = h + a
            h = h + block.ffn(block.ffn_norm(h))
            k_new.append(k_seg)
            v_new.append(v_seg)
        new_state = StreamState(state.M, state.z, k_new, v_new,
                                state.tokens_seen + T, state.segments_written)
        if logits == "none":
            return None, new_state
        if logits == "hidden":  # final hidden states before the norm; training picks positions
            return h, new_state
        if logits == "last":
            h = h[:, -1:]
        return self.lm_head(self.norm(h)), new_state

    def hidden_to_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))
