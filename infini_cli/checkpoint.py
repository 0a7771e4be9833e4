"""One-file checkpoints: safetensors tensors plus config, tokenizer, quantization and training
record in the header metadata. Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .model import LEGACY_PROJECTIONS, InfiniTransformer, fuse_legacy_projections
from .quantize import QuantScheme, dequantize_tensors, quantize_state_dict
from .tokenizer import TextTokenizer

FORMAT = "infini"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file and the fix."""


@dataclass
class CheckpointHeader:
    path: Path
    file_bytes: int
    config: ModelConfig
    quant: QuantScheme
    tokenizer_json: str
    training: dict[str, Any]
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype", "shape"}
    metadata: dict[str, str]

    @property
    def chat(self) -> dict[str, Any]:
        """A converted writer's chat template and special tokens ({} for our own models)."""
        try:
            chat = json.loads(self.metadata.get("chat") or "{}")
        except ValueError:
            raise CheckpointError(f"{self.path}: broken chat metadata (not JSON); re-convert the model") from None
        if not isinstance(chat, dict) or not all(isinstance(v, (str, type(None))) for v in chat.values()):
            raise CheckpointError(f"{self.path}: chat metadata must be an object of strings; re-convert the model")
        return chat


@dataclass
class LoadedModel:
    model: InfiniTransformer
    tokenizer: TextTokenizer
    header: CheckpointHeader
    device: torch.device
    dtype: torch.dtype
    # the decoding step compiled ahead of time for this model (decode_compiled.CompiledStep),
    # attached by the loader where one is built; None decodes eagerly
    compiled_decode: Optional[Any] = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_TENSOR_ELEMENTS = 1 << 36


def _check_tensor_entries(p: Path, header: dict) -> int:
    """Every tensor entry well formed and its byte range the size its dtype and shape say;
    returns the end of the data. Nothing is allocated from a size before this passes."""
    end = 0
    for name, info in header.items():
        ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list) \
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                    for x in (*info["shape"], *info["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{p}: broken header entry for tensor {str(name)[:60]!r} (needs dtype, shape and "
                                  "data_offsets); the file is corrupt, re-export it")
        if info["dtype"] not in DTYPE_BYTES:
            raise CheckpointError(f"{p}: tensor {name} has dtype {info['dtype'][:20]!r}, which infini does not store")
        elements = 1
        for d in info["shape"]:
            elements *= d
        a, b = info["data_offsets"]
        if elements > MAX_TENSOR_ELEMENTS or b < a or b - a != elements * DTYPE_BYTES[info["dtype"]]:
            raise CheckpointError(f"{p}: tensor {name}'s byte range does not match its shape {info['shape']} and "
                                  f"dtype {info['dtype']}; the file is corrupt, re-export it")
        end = max(end, b)
    return end


FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def _check_tensor_dtypes(p: Path, header: dict) -> None:
    """Each tensor's dtype is what its role needs: a wrong one would load as a broken model."""
    for name, info in header.items():
        dtype = info["dtype"]
        base = name[:-len("weight")] if name.endswith(".weight") else None
        if name.endswith((".scale", ".zero")):
            want = {"U8"} if name.endswith(".zero") else FLOAT_DTYPES
        elif base is not None and base + "zero" in header:
            want = {"U8"}                                    # int4: two codes per byte
        elif base is not None and base + "scale" in header:
            want = {"I8"}                                    # int8, per output channel
        else:
            want = FLOAT_DTYPES
        if dtype not in want:
            raise CheckpointError(f"{p}: tensor {name} is {dtype}, but its role needs {' or '.join(sorted(want))}; "
                                  "the file is corrupt or not an infini checkpoint")


def _raw_header(p: Path) -> tuple[bytes, bytes, int]:
    """(the 8-byte header length, the header's JSON bytes, the file's size), lengths checked."""
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{p}: too short to be a safetensors file (truncated or empty); re-download or re-export it")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{p}: not a safetensors file, or truncated (header length {n} bytes, file {size}); "
                                      "pass an infini .safetensors checkpoint")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror}); check the file's permissions") from None
    return head, raw, size


def model_hash(path: Union[str, Path]) -> str:
    """sha256 of the checkpoint's header (config, tokenizer, tensor layout and offsets) and size.

    The header names every tensor's dtype, shape and byte range, and the training record;
    with the size it tells checkpoints apart without hashing hundreds of MB of weights (the
    document cache and benchmark results are keyed by it).
    """
    head, raw, size = _raw_header(Path(path))
    return hashlib.sha256(head + raw + str(size).encode()).hexdigest()


def read_header(path: Union[str, Path]) -> CheckpointHeader:
    """Validate and read a checkpoint's header without loading its tensors."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{p}: pickle-based files ({p.suffix}) are refused because loading them can run code; "
                              "convert the model with `infini convert` to a .safetensors checkpoint")
    if not p.exists():
        raise CheckpointError(f"{p}: no such file; pass --model with the path of an infini .safetensors checkpoint")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; pass the .safetensors file inside it")
    head, raw, size = _raw_header(p)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{p}: broken safetensors header (not JSON); the file is corrupt, re-export it") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{p}: broken safetensors header (__metadata__ must map strings to strings); "
                              "the file is corrupt, re-export it")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: a safetensors file but not an infini checkpoint (no infini metadata); "
                              "convert Hugging Face models with `infini convert`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {meta.get('format_version')!r} is not supported "
                              f"(this infini reads version {FORMAT_VERSION}); upgrade infini")
    end = _check_tensor_entries(p, header)
    if 8 + len(raw) + end > size:
        raise CheckpointError(f"{p}: truncated: the header describes {8 + len(raw) + end} bytes but the file has {size}; "
                              "re-download or re-export it")
    try:
        config = ModelConfig.from_json(meta["config"])
        quant = QuantScheme.from_dict(json.loads(meta.get("quantization", "{}")))
        training = json.loads(meta.get("training", "{}"))
        tokenizer_json = meta["tokenizer"]
        if not isinstance(training, dict):
            raise ValueError("the training record is not an object")
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: broken infini metadata ({e}); re-export the checkpoint") from None
    _check_tensor_dtypes(p, header)
    tensors = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}
    return CheckpointHeader(p, size, config, quant, tokenizer_json, training, tensors, meta)


def _float_state_dict(model: InfiniTransformer) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # shared with embed.weight; safetensors stores it once
    return sd


def save_checkpoint(
    path: Union[str, Path],
    model: InfiniTransformer,
    tokenizer: TextTokenizer,
    quant: QuantScheme = QuantScheme(),
    training: Optional[dict[str, Any]] = None,
) -> Path:
    """Write model, tokenizer and metadata into one .safetensors file (atomically)."""
    p = Path(path)
    tensors = quantize_state_dict(_float_state_dict(model), quant)
    save_tensors(p, tensors, model.config, tokenizer.to_json(), quant, training or {})
    return p


def save_tensors(p: Path, tensors: dict[str, torch.Tensor], config: ModelConfig, tokenizer_json: str,
                 quant: QuantScheme, training: dict[str, Any], chat: Optional[dict[str, Any]] = None) -> None:
    """`chat`: a writer's chat template and special tokens (converted models), kept as they came."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "tokenizer": tokenizer_json,
        "quantization": json.dumps(quant.to_dict()),
        "training": json.dumps(training),
    }
    if chat:
        meta["chat"] = json.dumps(chat)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, p)
    _chmod_like_a_new_file(p)


def _chmod_like_a_new_file(p: Path) -> None:
    """Give `p` the mode any new file gets (0o666 less the umask).

    safetensors (0.8) writes through a temporary file created 0o600 and renames it into place, so
    a checkpoint would otherwise be readable by its owner alone (safetensors issue #782), and a
    model exported for others to use would fail to load for them.
    """
    if os.name != "posix":
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(p, 0o666 & ~umask)


def read_tensors(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{p}: cannot read tensors ({str(e).splitlines()[0]}); the file is corrupt, re-export it") from None


# weight names of files written before the projections were fused (wq.weight, w1.weight, ...)
LEGACY_NAMES = tuple(f".{part}" for parts in LEGACY_PROJECTIONS.values() for part in parts)


def load_checkpoint(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    dtype: Optional[torch.dtype] = None, kernels: str = "float") -> LoadedModel:
    """Load a checkpoint for inference: model built on the meta device, then weights assigned.

    dtype defaults to float32 on the CPU and bfloat16 on CUDA; the memory stays float32.
    kernels: "float" keeps the linear layers' weights as loaded; "int8" swaps them for
    torch's weight-only int8 kernel, "int4" for its int4 kernel where that loses nothing and
    int8 elsewhere (quantize.use_decode_kernels): faster single-token decoding on the CPU.
    """
    if kernels not in ("float", "int8", "int4"):
        raise ValueError(f"kernels must be float, int8 or int4, not {kernels!r}")
    header = read_header(path)
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    stored = read_tensors(header.path)
    # With decode kernels, a quantized layer's float weight is made from its codes only when
    # its kernel is built, one layer at a time (quantize's weight_of): the float model never
    # exists whole (the writer's would be 540 MB). Files from before the fused projections
    # (separate wq/wk/wv) are made whole first, as with float kernels.
    coded = set()
    if kernels != "float" and not any(n.endswith(LEGACY_NAMES) for n in stored):
        coded = {n for n in stored if n.endswith(".weight") and n[:-6] + "scale" in stored}
    sd = fuse_legacy_projections(dequantize_tensors({k: v for k, v in stored.items() if k not in coded}, dtype))
    for n in coded:
        rows, cols = stored[n].shape
        sd[n] = torch.empty(rows, cols * 2 if n[:-6] + "zero" in stored else cols, dtype=dtype, device="meta")
    if header.config.tie_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    with torch.device("meta"):
        model = InfiniTransformer(header.config)
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise CheckpointError(f"{header.path}: tensors do not match the config ({what}); re-export the checkpoint")
    try:
        model.load_state_dict({k: v if v.is_meta else v.to(dev) for k, v in sd.items()}, assign=True, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{header.path}: tensor shapes do not match the config ({str(e).splitlines()[-1].strip()})") from None
    if header.config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.eval()
    del sd  # the model holds the only float weights now: each is freed as its layer is swapped

    def weight_of(name: str, lin: torch.nn.Linear) -> torch.Tensor:
        if not lin.weight.is_meta:
            return lin.weight
        key = name + ".weight"
        parts = {k: stored[k] for k in (key, name + ".scale", name + ".zero") if k in stored}
        return dequantize_tensors(parts, dtype)[key].to(dev)

    if kernels == "int8":
        from .quantize import use_int8_linears

        use_int8_linears(model, weight_of=weight_of)
    elif kernels == "int4":
        from .quantize import use_decode_kernels

        use_decode_kernels(model, weight_of=weight_of)
    del stored
    try:
        chat = header.chat
        tok = TextTokenizer.from_json(header.tokenizer_json, eos_token=chat.get("eos_token"),
                                      pad_token=chat.get("pad_token"))
    except Exception:
        raise CheckpointError(f"{header.path}: the embedded tokenizer is broken; re-export the checkpoint") from None
    return LoadedModel(model, tok, header, dev, dtype)


DEFAULT_MODEL_NAME = "infini-mini.safetensors"


def default_model_path() -> Path:
    """$INFINI_MODEL if set, else the checkpoint shipped inside the package (it survives a wheel install)."""
    env = os.environ.get("INFINI_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME
