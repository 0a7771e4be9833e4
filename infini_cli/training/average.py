"""Average the weights of checkpoints that share a config and tokenizer (a "model soup").

Two runs that start from the same weights and are trained a little apart (say, one more on
prose haystacks) can each be better at one thing; their weighted mean often keeps both.
The sources are dequantized to float32 first, and the result is written as a float32
checkpoint, ready for `infini quantize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..checkpoint import read_header, read_tensors, save_tensors
from ..errors import InputError
from ..quantize import QuantScheme, dequantize_tensors

PathLike = Union[str, Path]


def normalized_weights(n_sources: int, weights: Optional[Sequence[float]]) -> list[float]:
    """Equal weights when none are given; otherwise non-negative weights scaled to sum to 1."""
    if weights is None:
        return [1.0 / n_sources] * n_sources
    if len(weights) != n_sources:
        raise InputError(f"{len(weights)} weights for {n_sources} checkpoints: give one weight a checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError(f"weights {list(weights)}: use non-negative numbers with a positive sum")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_checkpoints(sources: Sequence[PathLike], dst: PathLike,
                        weights: Optional[Sequence[float]] = None) -> dict:
    """Write the weighted mean of `sources` to `dst` (float32); returns what was done."""
    if len(sources) < 2:
        raise InputError("give at least two checkpoints to average")
    ws = normalized_weights(len(sources), weights)
    headers = [read_header(s) for s in sources]
    first = headers[0]
    for h in headers[1:]:
        if h.config != first.config:
            raise InputError(f"{h.path}: its model config differs from {first.path}'s; only runs of one architecture can be averaged")
        if h.tokenizer_json != first.tokenizer_json:
            raise InputError(f"{h.path}: its tokenizer differs from {first.path}'s; only runs with one tokenizer can be averaged")
    mean: dict[str, torch.Tensor] = {}
    for w, h in zip(ws, headers):
        tensors = dequantize_tensors(read_tensors(h.path), dtype=torch.float32)
        if mean and set(tensors) != set(mean):
            raise InputError(f"{h.path}: its tensors differ from {first.path}'s; re-export both with this version")
        for name, t in tensors.items():
            mean[name] = mean[name] + w * t if name in mean else w * t
    mean = {k: v.contiguous() for k, v in mean.items()}
    record = {"averaged": [{"source": Path(h.path).name, "weight": w, "training": h.training}
                           for w, h in zip(ws, headers)]}
    out = Path(dst)
    save_tensors(out, mean, first.config, first.tokenizer_json, QuantScheme(), record, chat=first.chat)
    return {"sources": [str(h.path) for h in headers], "weights": ws, "output": str(out),
            "bytes": out.stat().st_size}
