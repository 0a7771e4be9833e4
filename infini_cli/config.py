"""Model configuration: one dataclass, derived sizes, and named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

MemoryRule = Literal["linear", "delta"]

# Upper bounds for a config read from a file: far above any model that fits a machine, far
# below what would exhaust one (a segment sets the RoPE table and the attention's size).
LIMITS = {"vocab_size": 1 << 21, "d_model": 1 << 16, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024,
          "ffn_dim": 1 << 18, "segment_len": 1 << 16}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 768
    segment_len: int = 64
    memory_rule: MemoryRule = "linear"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # Initial gate logit: sigmoid(-2) ~ 0.12 of the output starts from memory, so
    # a fresh model behaves mostly like local attention but the memory path still
    # gets gradient from step one.
    gate_init: float = -2.0

    def __post_init__(self) -> None:
        # a config comes from a file (a checkpoint's header, a GGUF's metadata): check every
        # size is a sane positive integer before anything divides by it or allocates with it
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in 1..{limit}, not {value!r}")
        for name in ("rope_theta", "norm_eps", "gate_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
                raise ValueError(f"{name} must be a finite number, not {value!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be true or false, not {self.tie_embeddings!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.memory_rule not in ("linear", "delta"):
            raise ValueError(f"memory_rule must be 'linear' or 'delta', not {self.memory_rule!r}")
        if self.segment_len < 1:
            raise ValueError("segment_len must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (and its memory)."""
        return self.n_heads // self.n_kv_heads

    def memory_state_floats(self) -> int:
        """Floats in the compressive memory of the whole model (M and z, every layer)."""
        d = self.head_dim
        return self.n_layers * self.n_kv_heads * d * (d + 1)

    def kv_cache_floats(self, tokens: int) -> int:
        """Floats a plain KV cache over `tokens` tokens would hold."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * tokens

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, ModelConfig] = {
    # Tests: a few thousand parameters, grouped-query attention on purpose.
    "tiny": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        ffn_dim=64, segment_len=16),
    "tiny-delta": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                              ffn_dim=64, segment_len=16, memory_rule="delta"),
    # The first bundled checkpoint: small enough to train on two CPU cores.
    "small": ModelConfig(),
    # Half the width: three times the training steps a CPU hour, for the retrieval curriculum.
    "mini": ModelConfig(d_model=128, ffn_dim=384),
    # A larger model for a GPU.
    "base": ModelConfig(vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4,
                        ffn_dim=1536, segment_len=256),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
