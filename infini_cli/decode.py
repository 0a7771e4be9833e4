"""One new token at a time: the model's forward for decoding, with fewer kernels per token.

The general forward (model.py) serves any number of new tokens. For one token it still
concatenates the segment's keys and values on every call and rotates every key of the
segment again (the memory is written from keys before RoPE, so the state keeps those): work
that grows with the segment and a dozen kernels per layer per token, which at the 135M
writer's size cost more than its matrix products. A Decoder keeps what decoding needs in
buffers allocated once (gpt-fast's static cache): the rotated keys and the values of the
current segment, plus the keys before RoPE for the state; a step rotates the new token's
query and key together, writes its keys and value in place and attends over the filled
part. A layer whose memory is still empty skips the read: it is exactly zero there.

Attending in the model's dtype, the same numbers as the general forward (tests compare
logits and states); a float32 model on a CPU with native bf16 attends in bf16
(attention_dtype_for), within bf16's rounding of it. A full segment is written into memory
exactly as stream.feed does. The caller's state is never modified; to_state() hands the
stream back.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .memory import StreamState, commit_segment, memory_read
from .model import _SDPA_GQA, InfiniTransformer, _rope_table, _swap_halves, apply_rope
from .quantize import DEQUANTIZE_ROWS, _DecodeLinear, prompt_dtype

Product = Callable[[torch.Tensor], torch.Tensor]


def product_of(lin: torch.nn.Module, rows: int) -> Product:
    """x [rows, in] -> lin(x), in x's dtype, with the fewest torch calls: a quantized layer's
    kernel straight (its forward also reshapes and checks for a prompt: four calls more, 120
    layers a token); a float layer's F.linear. The same numbers as lin(x)."""
    if isinstance(lin, _DecodeLinear) and rows < DEQUANTIZE_ROWS:
        kernel = lin._kernel
        return lambda x: kernel(x).to(x.dtype)
    if isinstance(lin, torch.nn.Linear) and lin.bias is None:
        weight = lin.weight
        return lambda x: F.linear(x, weight)
    return lin


def attention_dtype_for(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """bfloat16 for a float32 model on a CPU with native bf16 matrix instructions
    (quantize.prompt_dtype), else the model's dtype. One query over the segment's keys reads
    them all every token: ~5 ms a token over 512 keys and 11 ms over 1,500 for the 135M
    writer's 30 layers in float32 on one thread here, 3.4 and 8.6 ms in bf16. Quality: the
    writer's perplexity with every attention in bf16 27.116, in float32 27.101."""
    if dtype == torch.float32 and device.type == "cpu" and prompt_dtype() == torch.bfloat16:
        return torch.bfloat16
    return dtype


class Decoder:
    """Decoding state for B streams in lockstep; step() takes one token per stream."""

    # keep the values in a buffer of their own even when the attention's dtype is the
    # model's (a compiled step takes them as one tensor per layer)
    separate_values = False

    def __init__(self, model: InfiniTransformer, state: StreamState, use_memory: bool = True,
                 reserve: int = 64, attention_dtype: Optional[torch.dtype] = None) -> None:
        """reserve: tokens expected to be decoded (the buffers grow if more are).
        attention_dtype: what the attention over the segment computes in (its rotated keys and
        values are kept in it); None: attention_dtype_for the model."""
        cfg = model.config
        self.model, self.config, self.use_memory = model, cfg, use_memory
        self.dtype = model.embed.weight.dtype
        self.device = model.embed.weight.device
        self.att_dtype = attention_dtype or attention_dtype_for(self.dtype, self.device)
        self.batch = state.batch_size
        cos, sin = _rope_table(cfg.segment_len, cfg.head_dim, cfg.rope_theta, self.device)
        self.cos, self.sin = cos.to(self.dtype), sin.to(self.dtype)
        self.length = state.local_len
        self._allocate(min(cfg.segment_len, self.length + max(reserve, 1)))
        n, G = self.length, cfg.n_kv_heads
        for i in range(cfg.n_layers):
            k = state.k_local[i].to(self.dtype)
            self.kv[i][:, :G, :n] = k
            self.kv[i][:, G:, :n] = state.v_local[i]
            self.k_rot[i][:, :, :n] = apply_rope(k, 0, cfg.rope_theta, cfg.segment_len)
            if self.v_att is not None:
                self.v_att[i][:, :, :n] = state.v_local[i]
        self._set_memory(state)
        # sigmoid(gate) per layer and query head, computed once instead of every token
        self.gates = [torch.sigmoid(b.attn.gate.float()).to(self.dtype).view(1, -1, 1, 1) for b in model.layers]
        self._zero = torch.zeros(self.batch, cfg.n_heads, 1, cfg.head_dim, dtype=self.dtype, device=self.device)
        B = self.batch
        self.products = [tuple(product_of(m, B) for m in (b.attn.wqkv, b.attn.wo, b.ffn.w13, b.ffn.w2))
                         for b in model.layers]
        self.head = product_of(model.lm_head, B)

    def _allocate(self, capacity: int) -> None:
        """Buffers for `capacity` positions of the segment, keeping what is filled: per layer
        kv [B, 2G, capacity, D] (keys before RoPE, then values: the order wqkv gives them, so
        one copy stores both), k_rot [B, G, capacity, D] in the attention's dtype, and where
        that is not the model's, the values again in it (v_att)."""
        cfg = self.config
        B, G, D, n = self.batch, cfg.n_kv_heads, cfg.head_dim, self.length
        zeros = lambda heads, dt: torch.zeros(B, heads, capacity, D, dtype=dt, device=self.device)  # noqa: E731
        layers = range(cfg.n_layers)
        kv, k_rot = [zeros(2 * G, self.dtype) for _ in layers], [zeros(G, self.att_dtype) for _ in layers]
        separate = self.att_dtype != self.dtype or self.separate_values
        v_att = [zeros(G, self.att_dtype) for _ in layers] if separate else None
        if hasattr(self, "kv"):
            for new, old in zip(kv + k_rot + (v_att or []), self.kv + self.k_rot + (self.v_att or [])):
                new[:, :, :n] = old[:, :, :n]
        self.kv, self.k_rot, self.v_att, self.capacity = kv, k_rot, v_att, capacity

    def _set_memory(self, state: StreamState) -> None:
        self.M, self.z = state.M, state.z
        self.tokens_seen, self.segments_written = state.tokens_seen, state.segments_written
        self.memory_empty = [not (m.any() or z.any()) for m, z in zip(self.M, self.z)]

    def to_state(self) -> StreamState:
        """The stream as a StreamState (copies: stepping on does not change it)."""
        n, G = self.length, self.config.n_kv_heads
        return StreamState(list(self.M), list(self.z),
                           [kv[:, :G, :n].clone() for kv in self.kv], [kv[:, G:, :n].clone() for kv in self.kv],
                           self.tokens_seen, self.segments_written)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] (or [B, 1]) -> next-token logits [B, vocab]."""
        self._make_room()
        logits = self._forward(tokens.view(self.batch))
        self.length += 1
        self.tokens_seen += 1
        return logits

    def _make_room(self) -> None:
        """Room at self.length for one more token: a full segment is written to memory first,
        as feed does; full buffers grow."""
        cfg = self.config
        if self.length == cfg.segment_len:
            self._set_memory(commit_segment(self.to_state(), cfg.memory_rule))
            self.length = 0
        elif self.length == self.capacity:
            self._allocate(min(cfg.segment_len, 2 * self.capacity))

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] at position self.length of the segment -> logits [B, vocab]; the token's
        keys and values are written into the buffers there."""
        cfg = self.config
        B, H, G, D = self.batch, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        p = self.length
        cos, sin = self.cos[p], self.sin[p]
        h = self.model.embed(tokens)  # [B, d]: one position, no time axis
        for i, block in enumerate(self.model.layers):
            wqkv, wo, w13, w2 = self.products[i]
            qkv = wqkv(block.attn_norm(h)).view(B, H + 2 * G, 1, D)
            qk = qkv[:, :H + G]
            qk_rot = torch.addcmul(qk * cos, _swap_halves(qk), sin)  # apply_rope, its table row taken once
            kv, k_rot = self.kv[i], self.k_rot[i]
            kv[:, :, p:p + 1] = qkv[:, H:]
            k_rot[:, :, p:p + 1] = qk_rot[:, H:]
            k = k_rot[:, :, :p + 1]
            if self.v_att is None:
                v, q_rot = kv[:, G:, :p + 1], qk_rot[:, :H]
            else:
                self.v_att[i][:, :, p:p + 1] = qkv[:, H + G:]
                v, q_rot = self.v_att[i][:, :, :p + 1], qk_rot[:, :H].to(self.att_dtype)
            if _SDPA_GQA and cfg.group_size > 1:
                local = F.scaled_dot_product_attention(q_rot, k, v, enable_gqa=True)
            else:
                local = F.scaled_dot_product_attention(q_rot, k.repeat_interleave(cfg.group_size, dim=1),
                                                       v.repeat_interleave(cfg.group_size, dim=1))
            local = local.to(self.dtype)
            if not self.use_memory:
                out = local
            else:
                if self.memory_empty[i]:
                    mem = self._zero  # the read of an empty memory: 0 / (0 + eps)
                else:
                    q = qk[:, :H].reshape(B, G, cfg.group_size, D)
                    mem = memory_read(q, self.M[i], self.z[i]).reshape(B, H, 1, D).to(local.dtype)
                out = torch.lerp(local, mem, self.gates[i])
            h = h + wo(out.view(B, H * D))
            gate, up = w13(block.ffn_norm(h)).chunk(2, dim=-1)
            h = h + w2(F.silu(gate) * up)
        return self.head(self.model.norm(h))
