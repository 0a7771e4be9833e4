"""What a checkpoint holds and what its state costs, computed from the header alone."""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import CheckpointHeader
from .model import InfiniTransformer

# token counts `info` reports a KV cache for: 32K, 1M and 10M
KV_LENGTHS = (32 * 1024, 1024 * 1024, 10 * 1024 * 1024)


def parameter_count(header: CheckpointHeader) -> int:
    with torch.device("meta"):
        model = InfiniTransformer(header.config)
    return sum(p.numel() for p in model.parameters())


def checkpoint_info(header: CheckpointHeader) -> dict[str, Any]:
    cfg = header.config
    # the memory is float32; a KV cache is counted at 2 bytes a value (bf16/fp16), as
    # inference engines keep it, so the ratio is not flattered by a float32 cache
    memory_bytes = cfg.memory_state_floats() * 4
    kv = {str(n): cfg.kv_cache_floats(n) * 2 for n in KV_LENGTHS}
    return {
        "path": str(header.path),
        "parameters": parameter_count(header),
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "segment_len": cfg.segment_len,
        "memory_rule": cfg.memory_rule,
        "quantization": header.quant.name,
        "file_bytes": header.file_bytes,
        "memory_state_bytes": memory_bytes,
        "kv_cache_bytes": kv,
        "compression": {n: round(b / memory_bytes, 1) for n, b in kv.items()},
        "training": training_summary(header.training),
    }


def training_summary(training: dict) -> dict:
    """Steps, tokens and time of the run; for an averaged checkpoint, the same for each source."""
    keep = ("steps", "tokens_seen", "seconds")
    summary = {k: v for k, v in training.items() if k in keep}
    if "averaged" in training:
        summary["averaged"] = [{"source": s.get("source"), "weight": s.get("weight"),
                                **{k: v for k, v in s.get("training", {}).items() if k in keep}}
                               for s in training["averaged"]]
    return summary
