"""Convert a local Hugging Face Llama-family folder into an infini checkpoint.

Weights map one to one (Llama's q/k layout already suits rotate-half RoPE). Gates are set
far negative so the converted model starts as the original, attending locally only; it is
then ready to be fine-tuned with memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint import CheckpointError, save_tensors
from .config import ModelConfig
from .model import fuse_legacy_projections
from .quantize import QuantScheme, quantize_state_dict

# sigmoid(-12) = 6e-6: the memory's share of each head's output at the start
CONVERTED_GATE = -12.0

_LAYER_MAP = {
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "mlp.gate_proj.weight": "ffn.w1.weight",
    "mlp.up_proj.weight": "ffn.w3.weight",
    "mlp.down_proj.weight": "ffn.w2.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def config_from_hf(hf: dict[str, Any], segment_len: int, memory_rule: str) -> ModelConfig:
    if hf.get("model_type") not in (None, "llama", "mistral", "qwen2"):
        raise ValueError(f"model_type {hf.get('model_type')!r} is not a Llama-family model")
    if hf.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported (segments restart positions, so none is needed)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("attention or MLP biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf.get('hidden_act')!r} is not SwiGLU's silu")
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d // h):
        raise ValueError("head_dim other than hidden_size / num_attention_heads is not supported")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=h,
        n_kv_heads=hf.get("num_key_value_heads") or h,
        ffn_dim=hf["intermediate_size"],
        segment_len=min(segment_len, hf.get("max_position_embeddings", segment_len)),
        memory_rule=memory_rule,  # type: ignore[arg-type]
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        gate_init=CONVERTED_GATE,
    )


def map_hf_name(name: str) -> str | None:
    if name.startswith("model."):
        name = name[len("model."):]
    if name == "embed_tokens.weight":
        return "embed.weight"
    if name == "norm.weight":
        return "norm.weight"
    if name == "lm_head.weight":
        return "lm_head.weight"
    if name.startswith("layers."):
        _, idx, rest = name.split(".", 2)
        if rest in _LAYER_MAP:
            return f"layers.{idx}.{_LAYER_MAP[rest]}"
        if rest.endswith("rotary_emb.inv_freq"):
            return None
    raise ValueError(f"unexpected tensor {name!r}")


def convert_hf(folder: Path, out: Path, segment_len: int = 2048, memory_rule: str = "delta",
               quant: QuantScheme = QuantScheme()) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory; pass a Hugging Face model folder with config.json")
    for need in ("config.json", "tokenizer.json"):
        if not (folder / need).exists():
            raise CheckpointError(f"{folder}: no {need}; a Llama-family folder needs config.json, *.safetensors and tokenizer.json")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        if any(folder.glob("*.bin")):
            raise CheckpointError(f"{folder}: only pickle (.bin) weights; save the model with safe_serialization=True first")
        raise CheckpointError(f"{folder}: no *.safetensors weights")
    try:
        config = config_from_hf(json.loads((folder / "config.json").read_text()), segment_len, memory_rule)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: cannot convert ({e})") from None
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                try:
                    ours = map_hf_name(name)
                except ValueError as e:
                    raise CheckpointError(f"{shard}: {e}; only Llama-family weights can be converted") from None
                if ours is not None:
                    sd[ours] = f.get_tensor(name).float()
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    elif "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["embed.weight"].clone()
    for i in range(config.n_layers):
        sd[f"layers.{i}.attn.gate"] = torch.full((config.n_heads,), CONVERTED_GATE)
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    tensors = quantize_state_dict(fuse_legacy_projections(sd), quant)
    save_tensors(Path(out), tensors, config, tokenizer_json, quant,
                 {"converted_from": str(folder), "note": "gates start local-only; fine-tune with memory"})
    return config
