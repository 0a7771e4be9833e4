"""A slow, explicit float64 Infini-Transformer written from the paper, for tests only.

Loops over heads and segments, repeats key/value heads as Llama's repeat_kv does, takes the
memory from Q/K before RoPE and restarts RoPE positions every segment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6


def rms(x, w, eps):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope(x, theta):
    # x [T, D] at positions 0..T-1, half-split layout
    T, D = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    ang = torch.cat([ang, ang], -1)
    x1, x2 = x[:, : D // 2], x[:, D // 2:]
    return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()


def sig(x):
    return F.elu(x) + 1


def reference_forward(model, tokens: list[int], use_memory: bool = True) -> torch.Tensor:
    """Logits [T, vocab] for a whole token list, segment by segment."""
    cfg = model.config
    W = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, G, D, S = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.segment_len
    g = H // G
    Ms = [[torch.zeros(D, D, dtype=torch.float64) for _ in range(G)] for _ in range(cfg.n_layers)]
    zs = [[torch.zeros(D, dtype=torch.float64) for _ in range(G)] for _ in range(cfg.n_layers)]
    logits = []
    for s0 in range(0, len(tokens), S):
        seg = tokens[s0:s0 + S]
        T = len(seg)
        h = W["embed.weight"][torch.tensor(seg)]
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            x = rms(h, W[p + "attn_norm.weight"], cfg.norm_eps)
            wq, wk, wv = W[p + "attn.wqkv.weight"].split((H * D, G * D, G * D))
            q = x @ wq.T
            k = x @ wk.T
            v = x @ wv.T
            heads = []
            for hh in range(H):
                kv = hh // g  # repeat_interleave mapping
                qh = q[:, hh * D:(hh + 1) * D]
                kh = k[:, kv * D:(kv + 1) * D]
                vh = v[:, kv * D:(kv + 1) * D]
                scores = rope(qh, cfg.rope_theta) @ rope(kh, cfg.rope_theta).T / math.sqrt(D)
                scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
                local = scores.softmax(-1) @ vh
                if use_memory:
                    mem = (sig(qh) @ Ms[i][kv]) / (sig(qh) @ zs[i][kv] + EPS).unsqueeze(-1)
                    beta = torch.sigmoid(W[p + "attn.gate"][hh])
                    heads.append(beta * mem + (1 - beta) * local)
                else:
                    heads.append(local)
            h = h + torch.cat(heads, -1) @ W[p + "attn.wo.weight"].T
            y = rms(h, W[p + "ffn_norm.weight"], cfg.norm_eps)
            w1, w3 = W[p + "ffn.w13.weight"].chunk(2)
            h = h + (F.silu(y @ w1.T) * (y @ w3.T)) @ W[p + "ffn.w2.weight"].T
            if use_memory and T == S:  # a full segment is written after it is read
                for kv in range(G):
                    kh = sig(k[:, kv * D:(kv + 1) * D])
                    vh = v[:, kv * D:(kv + 1) * D]
                    if cfg.memory_rule == "delta":
                        vh = vh - (kh @ Ms[i][kv]) / (kh @ zs[i][kv] + EPS).unsqueeze(-1)
                    Ms[i][kv] = Ms[i][kv] + kh.T @ vh
                    zs[i][kv] = zs[i][kv] + kh.sum(0)
        logits.append(rms(h, W["norm.weight"], cfg.norm_eps) @ W["lm_head.weight"].T)
    return torch.cat(logits)
