"""Read a Llama-family GGUF file (llama.cpp's format) into an infini checkpoint.

A GGUF is untrusted input: every count and size in its metadata is checked against sane
limits and the tensors' declared shapes against the config before anything is dequantized.
Tensors go through the `gguf` package's own dequantization (every block type llama.cpp
writes). llama.cpp stores the rows of Q and K permuted for its interleaved RoPE; they are
put back into the rotate-half layout our model (and Hugging Face's) uses. The tokenizer is
rebuilt from the GGUF's vocabulary and merges; the chat template and special tokens travel
in the checkpoint's metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .checkpoint import CheckpointError, save_tensors
from .config import ModelConfig
from .convert import CONVERTED_GATE
from .model import fuse_legacy_projections
from .quantize import QuantScheme, quantize_state_dict

GGUF_MAGIC = b"GGUF"
# Sane limits: far above any Llama that fits a machine, far below what would exhaust one.
LIMITS = {"block_count": 1024, "embedding_length": 65536, "feed_forward_length": 1 << 18,
          "head_count": 1024, "vocab": 1 << 21, "context_length": 1 << 24}
SUPPORTED_ARCHITECTURES = ("llama",)
# GGUF pre-tokenizer names whose split rules we rebuild: GPT-2's byte-level regex, with
# single digits first for SmolLM's.
PRE_TOKENIZERS = {"default": False, "gpt2": False, "smollm": True}

_LAYER_MAP = {
    "attn_q.weight": "attn.wq.weight",
    "attn_k.weight": "attn.wk.weight",
    "attn_v.weight": "attn.wv.weight",
    "attn_output.weight": "attn.wo.weight",
    "ffn_gate.weight": "ffn.w1.weight",
    "ffn_up.weight": "ffn.w3.weight",
    "ffn_down.weight": "ffn.w2.weight",
    "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}


def _require_gguf():
    try:
        from gguf import GGUFReader  # noqa: F401
    except ImportError:
        raise CheckpointError("reading GGUF files needs the gguf package: pip install gguf") from None


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass a .gguf model file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic); pass a llama.cpp .gguf model")
    try:
        return GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises many kinds on damaged files
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: damaged GGUF file ({first}); download it again") from None


def _field(reader, key: str, kind: type, path: Path, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is not None:
            return default
        raise CheckpointError(f"{path}: GGUF metadata has no {key}; it is not a complete Llama-family model")
    try:
        value = f.contents()
    except Exception:
        raise CheckpointError(f"{path}: GGUF metadata field {key} is unreadable; the file is damaged") from None
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(f"{path}: GGUF metadata field {key} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _int_field(reader, key: str, path: Path, limit: int, default: Optional[int] = None) -> int:
    v = _field(reader, key, int, path, default)
    if not 1 <= v <= limit:
        raise CheckpointError(f"{path}: GGUF {key} = {v} is outside 1..{limit}; the file is damaged or not a Llama")
    return v


def read_config(reader, path: Path, segment_len: int, memory_rule: str) -> ModelConfig:
    arch = _field(reader, "general.architecture", str, path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} cannot be converted; only Llama-family GGUF files "
                              f"({', '.join(SUPPORTED_ARCHITECTURES)}) can")
    a = arch
    n_layers = _int_field(reader, f"{a}.block_count", path, LIMITS["block_count"])
    d = _int_field(reader, f"{a}.embedding_length", path, LIMITS["embedding_length"])
    ffn = _int_field(reader, f"{a}.feed_forward_length", path, LIMITS["feed_forward_length"])
    heads = _int_field(reader, f"{a}.attention.head_count", path, LIMITS["head_count"])
    kv = _int_field(reader, f"{a}.attention.head_count_kv", path, heads, heads)
    ctx = _int_field(reader, f"{a}.context_length", path, LIMITS["context_length"], 2048)
    rope_dims = _field(reader, f"{a}.rope.dimension_count", int, path, d // heads)
    if rope_dims != d // heads:
        raise CheckpointError(f"{path}: partial RoPE ({rope_dims} of {d // heads} dims) is not supported")
    if reader.fields.get(f"{a}.rope.scaling.type") is not None and \
            _field(reader, f"{a}.rope.scaling.type", str, path) not in ("none",):
        raise CheckpointError(f"{path}: RoPE scaling is not supported (segments restart positions, so none is needed)")
    theta = _field(reader, f"{a}.rope.freq_base", float, path, 10000.0)
    eps = _field(reader, f"{a}.attention.layer_norm_rms_epsilon", float, path, 1e-5)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0
    if not 1 <= vocab <= LIMITS["vocab"]:
        raise CheckpointError(f"{path}: GGUF vocabulary of {vocab} tokens; a model needs tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    try:
        return ModelConfig(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=heads, n_kv_heads=kv,
                           ffn_dim=ffn, segment_len=min(segment_len, ctx), memory_rule=memory_rule,  # type: ignore[arg-type]
                           rope_theta=float(theta), norm_eps=float(eps),
                           tie_embeddings="output.weight" not in names, gate_init=CONVERTED_GATE)
    except ValueError as e:
        raise CheckpointError(f"{path}: inconsistent GGUF config ({e})") from None


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our tensor names -> [out, in] shapes (the GGUF stores them as [in, out])."""
    hd, kv = c.head_dim, c.n_kv_heads * c.head_dim
    out = {"embed.weight": (c.vocab_size, c.d_model), "norm.weight": (c.d_model,)}
    if not c.tie_embeddings:
        out["lm_head.weight"] = (c.vocab_size, c.d_model)
    per = {"attn.wq.weight": (c.n_heads * hd, c.d_model), "attn.wk.weight": (kv, c.d_model),
           "attn.wv.weight": (kv, c.d_model), "attn.wo.weight": (c.d_model, c.n_heads * hd),
           "ffn.w1.weight": (c.ffn_dim, c.d_model), "ffn.w3.weight": (c.ffn_dim, c.d_model),
           "ffn.w2.weight": (c.d_model, c.ffn_dim), "attn_norm.weight": (c.d_model,),
           "ffn_norm.weight": (c.d_model,)}
    for i in range(c.n_layers):
        out.update({f"layers.{i}.{k}": v for k, v in per.items()})
    return out


def map_gguf_name(name: str) -> Optional[str]:
    if name == "token_embd.weight":
        return "embed.weight"
    if name == "output_norm.weight":
        return "norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    if name == "rope_freqs.weight":
        return None
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_MAP:
        return f"layers.{parts[1]}.{_LAYER_MAP[parts[2]]}"
    raise ValueError(f"unexpected tensor {name!r}")


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's interleaved-RoPE row order back to rotate-half: per head, rows
    (pair 0 re, pair 0 im, pair 1 re, ...) become (all re, all im)."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def read_tensors(reader, path: Path, config: ModelConfig,
                 on_tensor: Optional[Callable[[int, int], None]] = None) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    expected = _expected_shapes(config)
    tensors = list(reader.tensors)
    sd: dict[str, torch.Tensor] = {}
    for i, t in enumerate(tensors):
        try:
            ours = map_gguf_name(t.name)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; only Llama-family weights can be converted") from None
        if ours is None:
            continue
        shape = tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists dims innermost first
        while len(shape) > 1 and shape[0] == 1 and len(expected.get(ours, ())) < len(shape):
            shape = shape[1:]
        if ours not in expected or shape != expected[ours]:
            raise CheckpointError(f"{path}: tensor {t.name} has shape {list(shape)}, the config needs "
                                  f"{list(expected.get(ours, ()))}; the file is damaged or not this architecture")
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{path}: tensor {t.name} uses block type {t.tensor_type.name}, "
                                  "which the gguf package cannot dequantize; upgrade gguf") from None
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {t.name} cannot be read ({str(e)[:120]}); the file is damaged") from None
        w = torch.from_numpy(arr.reshape(shape).astype("float32"))  # a writable copy
        if ours.endswith("attn.wq.weight"):
            w = unpermute_rope(w, config.n_heads)
        elif ours.endswith("attn.wk.weight"):
            w = unpermute_rope(w, config.n_kv_heads)
        sd[ours] = w
        if on_tensor:
            on_tensor(i + 1, len(tensors))
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(f"{path}: GGUF lacks tensors {missing[:3]}; the file is incomplete")
    return sd


def read_tokenizer(reader, path: Path) -> tuple[str, dict[str, Any]]:
    """The `tokenizers` JSON rebuilt from the GGUF vocabulary, and the chat settings."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model", str, path)
    pre = _field(reader, "tokenizer.ggml.pre", str, path, "default")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer type {kind!r} is not supported; only byte-level BPE ('gpt2') is")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    tokens = _field(reader, "tokenizer.ggml.tokens", list, path)
    merges = _field(reader, "tokenizer.ggml.merges", list, path)
    types = _field(reader, "tokenizer.ggml.token_type", list, path, [1] * len(tokens))
    if not all(isinstance(x, str) for x in tokens) or len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{path}: GGUF vocabulary is not a list of distinct strings")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ") if isinstance(m, str) else ("", "", "")
        if not sep:
            raise CheckpointError(f"{path}: GGUF merge {str(m)[:40]!r} is not 'left right'")
        pairs.append((a, b))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if PRE_TOKENIZERS[pre]:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, ty in enumerate(types) if ty in (3, 4)]  # CONTROL, USER_DEFINED
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def special(key: str) -> Optional[str]:
        i = reader.fields.get(key)
        if i is None:
            return None
        idx = _field(reader, key, int, path)
        return tokens[idx] if 0 <= idx < len(tokens) else None

    chat = {"template": _field(reader, "tokenizer.chat_template", str, path, "") or None,
            "bos_token": special("tokenizer.ggml.bos_token_id"),
            "eos_token": special("tokenizer.ggml.eos_token_id"),
            "pad_token": special("tokenizer.ggml.padding_token_id")}
    return tok.to_str(), chat


def convert_gguf(path: Path, out: Path, segment_len: int = 2048, memory_rule: str = "delta",
                 quant: QuantScheme = QuantScheme(),
                 on_tensor: Optional[Callable[[int, int], None]] = None) -> ModelConfig:
    _require_gguf()
    path = Path(path)
    reader = _open(path)
    config = read_config(reader, path, segment_len, memory_rule)
    tokenizer_json, chat = read_tokenizer(reader, path)
    sd = read_tensors(reader, path, config, on_tensor)
    for i in range(config.n_layers):
        sd[f"layers.{i}.attn.gate"] = torch.full((config.n_heads,), CONVERTED_GATE)
    name = _field(reader, "general.name", str, path, path.stem)
    tensors = quantize_state_dict(fuse_legacy_projections(sd), quant)
    save_tensors(Path(out), tensors, config, tokenizer_json, quant,
                 {"converted_from": path.name, "source_name": name,
                  "note": "gates start local-only; fine-tune with memory"}, chat=chat)
    return config
