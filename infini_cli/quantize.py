"""Weight-only quantization in a portable layout.

int8: symmetric per output channel:   weight int8 [out, in],  scale float32 [out]
int4: asymmetric, groups along input: weight uint8 [out, in/2] (two codes a byte, low nibble
      first), scale float32 [out, in/g], zero uint8 [out, in/g]

Only the linear layers' weights are quantized; embeddings are stored in float16, norms and
gates in float32. Loading dequantizes to a plain float weight: on this CPU a float32 matrix
product on dequantized weights ran about 50x faster for whole segments than an int8 kernel.
For decoding, a loaded model's layers can be swapped for torch's weight-only int8 and int4
kernels (Int8Linear, Int4Linear, use_decode_kernels), which read a quarter or an eighth of
the bytes a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn.functional as F

INT4_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantScheme:
    bits: Optional[int] = None        # None (float), 8 or 4
    group_size: Optional[int] = None  # int4 only

    @property
    def name(self) -> str:
        if self.bits is None:
            return "float32"
        return "int8" if self.bits == 8 else f"int4-g{self.group_size}"

    def to_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantScheme":
        return cls(d.get("bits"), d.get("group_size"))


def is_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """Linear weights only: 2-D, not the embedding table."""
    return tensor.dim() == 2 and name.endswith(".weight") and not name.startswith("embed.")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out_f, in_f = w.shape
    if in_f % group_size or in_f % 2:
        raise ValueError(f"input size {in_f} is not a multiple of the group size {group_size}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    lo = g.amin(dim=-1)
    hi = g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    zero = torch.round(-lo / scale).clamp(0, 15)
    codes = torch.round(g / scale[..., None] + zero[..., None]).clamp(0, 15).to(torch.uint8)
    codes = codes.reshape(out_f, in_f)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.contiguous(), scale, zero.to(torch.uint8)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    out_f = packed.shape[0]
    codes = torch.empty(out_f, packed.shape[1] * 2, dtype=torch.uint8, device=packed.device)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    n_groups = scale.shape[1]
    g = codes.reshape(out_f, n_groups, -1).float()
    return ((g - zero.float()[..., None]) * scale.float()[..., None]).reshape(out_f, -1)


def quantize_state_dict(sd: dict[str, torch.Tensor], scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """Float state dict -> tensors to store. Layers that cannot take int4 groups fall back to int8."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        t = t.detach().cpu()
        if scheme.bits is None:
            out[name] = t.float().contiguous()
        elif not is_quantizable(name, t):
            out[name] = (t.half() if name.startswith("embed.") else t.float()).contiguous()
        elif scheme.bits == 4 and t.shape[1] % scheme.group_size == 0:
            q, s, z = quantize_int4(t, scheme.group_size)
            out[name], out[name[:-6] + "scale"], out[name[:-6] + "zero"] = q, s, z
        else:
            q, s = quantize_int8(t)
            out[name], out[name[:-6] + "scale"] = q, s
    return out


def dequantize_tensors(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stored tensors -> a float state dict in `dtype` (the layout tells each tensor's scheme)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith((".scale", ".zero")):
            continue
        base = name[:-6] if name.endswith(".weight") else None
        if base is not None and base + "zero" in tensors:
            w = dequantize_int4(t, tensors[base + "scale"], tensors[base + "zero"])
        elif base is not None and base + "scale" in tensors:
            w = dequantize_int8(t, tensors[base + "scale"])
        else:
            w = t
        # norms and gates stay float32 whatever the compute dtype: they are tiny and sensitive
        keep_fp32 = name.endswith("gate") or "norm" in name
        out[name] = w.float() if keep_fp32 else w.to(dtype)
    return out


def relative_error(reference: dict[str, torch.Tensor], approx: dict[str, torch.Tensor]) -> float:
    """||W - W_q|| / ||W|| over all quantized weights together (Frobenius)."""
    num = den = 0.0
    for name, w in reference.items():
        if is_quantizable(name, w):
            num += (w.float() - approx[name].float()).pow(2).sum().item()
            den += w.float().pow(2).sum().item()
    return (num / den) ** 0.5 if den else 0.0


# ----------------------------------------------------------------------------- int8 decode kernel
#
# torch's weight-only int8 kernel (aten::_weight_int8pack_mm: x [M, K] @ (int8 [N, K] * scale [N]).T)
# takes our stored int8 layout as is. Measured on this CPU (AVX-512, one thread, 768x256 weight):
# with float32 activations it is ~7x *slower* than a float32 F.linear (a slow fallback), with
# bfloat16 activations ~1.3-1.9x faster for one row (decode) and ~1.3x slower at 64 rows (a
# segment). So Int8Linear feeds it bfloat16 activations and returns the input's dtype; that
# rounds activations to bf16 (~0.4% relative), on top of the weights' int8 rounding. It is
# opt-in (load_checkpoint(..., kernels="int8"), or "int4" below) and meant for single-token decoding.


# Both kernels are made for a few rows (decoding). From DEQUANTIZE_ROWS rows on (a prompt)
# the layer makes weights from its codes for that one product (in prompt_dtype()) and uses
# F.linear: for the writer's 3,072 x 576 layer on one thread, in float32, 512 rows took 37 ms
# that way against 58 ms in the int4 kernel, 128 rows about the same, 64 rows 11 ms against 4.5.
DEQUANTIZE_ROWS = 128


@lru_cache(maxsize=1)
def prompt_dtype() -> torch.dtype:
    """The dtype a decode layer multiplies a prompt in: bfloat16 where the CPU has native bf16
    matrix instructions (AVX512-BF16 or AMX), float32 elsewhere. On the Intel Xeon of the
    README (AMX), a 700-token prompt through the writer's 120 products took 402 ms in bf16,
    conversions included, against 834 ms in float32 (two threads; 655 against 1,467 on one)."""
    native = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return torch.bfloat16 if any(getattr(torch.cpu, f, lambda: False)() for f in native) else torch.float32


class _DecodeLinear(torch.nn.Module):
    """A bias-free linear layer with low-bit weights: a few rows (decoding) go through the
    layer's kernel (`_kernel`, bfloat16 activations), a prompt through weights made from its
    codes (`dequantized`) in prompt_dtype()."""

    in_features: int
    out_features: int

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.shape[0] >= DEQUANTIZE_ROWS:  # a prompt: weights made for this product
            dt = prompt_dtype()
            return F.linear(x.to(dt), self.dequantized(dt)).to(x.dtype)
        return self._kernel(rows).to(x.dtype).reshape(*shape[:-1], self.out_features)


WeightOf = Callable[[str, torch.nn.Linear], torch.Tensor]


def _weight(name: str, lin: torch.nn.Linear) -> torch.Tensor:
    return lin.weight


def _swap_linears(model: torch.nn.Module, make: Callable[[str, torch.nn.Linear], torch.nn.Module]) -> None:
    """Replace every bias-free nn.Linear of `model`, in place, by make(qualified name, linear)."""
    dev = next(model.parameters()).device
    if not int8_kernel_available(dev):
        raise RuntimeError(f"this torch ({torch.__version__}) has no weight-only int8 kernel on {dev}")
    for prefix, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear) and sub.bias is None:
                setattr(child, attr, make(f"{prefix}.{attr}" if prefix else attr, sub))


def int8_kernel_available(device: torch.device | str = "cpu") -> bool:
    """Whether this torch has a working weight-only int8 matmul on `device`."""
    op = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if op is None:
        return False
    try:
        x = torch.ones(1, 32, dtype=torch.bfloat16, device=device)
        w = torch.ones(8, 32, dtype=torch.int8, device=device)
        s = torch.ones(8, dtype=torch.bfloat16, device=device)
        return bool(torch.allclose(op(x, w, s).float(), torch.full((1, 8), 32.0, device=device)))
    except (RuntimeError, NotImplementedError):
        return False


class Int8Linear(_DecodeLinear):
    """A bias-free linear layer with int8 per-output-channel weights and torch's int8 kernel."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.register_buffer("weight_int8", q.contiguous())          # [out, in] int8
        self.register_buffer("scale", scale.to(act_dtype).contiguous())  # [out]
        self.act_dtype = act_dtype
        self.in_features, self.out_features = q.shape[1], q.shape[0]

    @classmethod
    def from_weight(cls, w: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16) -> "Int8Linear":
        q, scale = quantize_int8(w.detach())
        return cls(q.to(w.device), scale.to(w.device), act_dtype)

    @classmethod
    def from_linear(cls, lin: torch.nn.Linear, act_dtype: torch.dtype = torch.bfloat16) -> "Int8Linear":
        if lin.bias is not None:
            raise ValueError("Int8Linear has no bias")
        return cls.from_weight(lin.weight, act_dtype)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.scale.to(dtype)[:, None]

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows.to(self.act_dtype), self.weight_int8, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, act={self.act_dtype}"


def use_int8_linears(model: torch.nn.Module, act_dtype: torch.dtype = torch.bfloat16,
                     weight_of: WeightOf = _weight) -> torch.nn.Module:
    """Swap every bias-free nn.Linear of `model` for an Int8Linear, in place; returns the model.
    weight_of(name, linear) gives each layer's float weight (by default its own; a loader
    can make it then, one layer at a time, for a model built on the meta device).

    Quantizing weights that were dequantized from an int8 checkpoint gives back the same codes
    (the row's largest weight maps to 127 again), so nothing is lost a second time. A tied
    lm_head keeps sharing nothing with the embedding afterwards, which is fine for inference.
    """
    _swap_linears(model, lambda name, lin: Int8Linear.from_weight(weight_of(name, lin), act_dtype))
    return model


# torch's weight-only int4 kernel for the CPU (aten::_weight_int4pack_mm_for_cpu, tinygemm's
# layout): x [M, K] @ W.T with W[n, k] = (code - 8) * scale[k // g, n] + offset[k // g, n],
# the codes packed by aten::_convert_weight_to_int4pack_for_cpu. Its offset is a float (like
# GGUF's Q4_1 minimum), so a group's 16 levels span exactly its smallest to its largest
# weight. Measured on the Intel Xeon of the README (two threads, the 135M writer's 121
# products, weights streamed from memory as in decoding): 6.3-8.6 ms a token against 13.4
# for the int8 kernel and 26.8 for float32. bfloat16 activations only: with float32 ones it
# falls back to a path ~30x slower.


def int4_kernel_available(device: torch.device | str = "cpu") -> bool:
    """Whether this torch has a working weight-only int4 matmul on `device` (CPU only)."""
    if torch.device(device).type != "cpu" or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return False
    try:
        lin = Int4Linear.from_weight(torch.ones(16, 64), 32)
        return bool(torch.allclose(lin(torch.ones(1, 64)), torch.full((1, 16), 64.0)))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class Int4Linear(_DecodeLinear):
    """A bias-free linear layer with group-wise int4 weights (float offsets) and torch's kernel."""

    def __init__(self, packed: torch.Tensor, scale_offset: torch.Tensor, codes: torch.Tensor, group_size: int,
                 in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("weight_int4", packed)          # the kernel's packed layout
        self.register_buffer("scale_offset", scale_offset)   # [in/g, out, 2] bfloat16
        # the same codes in a layout of ours, for prompts (float weights made per product):
        # uint8 [out, in/2], column j in the low nibble and column j + in/2 in the high one
        self.register_buffer("codes", codes)
        self.group_size, self.in_features, self.out_features = group_size, in_features, out_features

    @staticmethod
    def _grid(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes [out, in/g, g] as floats 0..15, minimum and step [out, in/g]) of w [out, in]."""
        out_f, in_f = w.shape
        g = w.detach().float().reshape(out_f, in_f // group_size, group_size)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-12)
        codes = (g - lo[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)  # in place: one copy
        return codes, lo, scale

    @classmethod
    def grid_error(cls, w: torch.Tensor, group_size: int, rows: int = 256) -> float:
        """||W_int4 - W|| / ||W|| on `rows` rows spread over w (the whole matrix costs as much
        as quantizing it, and a 49,152-row output layer is rejected from a sample)."""
        sample = w.detach()[:: max(1, w.shape[0] // rows)].float()
        codes, lo, scale = cls._grid(sample, group_size)
        back = codes.mul_(scale[..., None]).add_(lo[..., None]).reshape(sample.shape)
        return float((back - sample).norm() / sample.norm().clamp(min=1e-12))

    @classmethod
    def from_weight(cls, w: torch.Tensor, group_size: int) -> "Int4Linear":
        out_f, in_f = w.shape
        codes, lo, scale = cls._grid(w, group_size)
        flat = codes.reshape(out_f, in_f).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(flat.to(torch.int32), 2)
        offset = lo + 8 * scale  # the kernel subtracts 8 from every code
        scale_offset = torch.stack((scale, offset), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        half = in_f // 2
        ours = flat[:, :half] | (flat[:, half:] << 4)
        return cls(packed, scale_offset, ours.contiguous(), group_size, in_f, out_f)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] the kernel multiplies by: (code - 8) * scale + offset."""
        c = torch.cat((self.codes & 15, self.codes >> 4), dim=1).to(dtype)
        c = c.view(self.out_features, self.in_features // self.group_size, self.group_size)
        scale, offset = self.scale_offset.to(dtype).transpose(0, 1).unbind(-1)  # [out, in/g] each
        return c.mul_(scale[..., None]).add_((offset - 8 * scale)[..., None]).view(self.out_features,
                                                                                    self.in_features)

    @staticmethod
    def fits(lin: torch.nn.Linear, group_size: int) -> bool:
        """The kernel's shape limits: input a multiple of the group, output of 16."""
        return lin.bias is None and lin.in_features % group_size == 0 and lin.out_features % 16 == 0

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(torch.bfloat16), self.weight_int4,
                                                          self.group_size, self.scale_offset)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4-g{self.group_size}"


# A layer decodes in int4 only where re-quantizing its weights to 4 bits loses (almost)
# nothing: weights that came from a 4-bit file (SmolLM2's Q4_1 GGUF, stored by `infini pull`
# in int8) sit on a 4-bit grid already, and re-quantize with ~1% relative error; weights
# trained in float re-quantize with ~8% (a Gaussian matrix: 7.8%), and so does an 8-bit
# embedding used as the output layer (SmolLM2's: 9%), which then decode in int8. Measured on
# the writer (4 books/valid novels, 8 windows of 1,024 tokens): perplexity 27.10 so decoded,
# 27.14 with every layer in int8, 27.03 float32 from the GGUF; 28.75 with the output layer in
# int4 too.
INT4_MAX_ERROR = 0.03
INT4_GROUP_SIZE = 32


def use_decode_kernels(model: torch.nn.Module, act_dtype: torch.dtype = torch.bfloat16,
                       weight_of: WeightOf = _weight) -> dict[str, int]:
    """Swap every bias-free nn.Linear for Int4Linear where that loses nothing (above) and the
    int4 kernel exists, else for Int8Linear; in place (weight_of as in use_int8_linears).
    Returns how many layers took each."""
    int4 = int4_kernel_available(next(model.parameters()).device)
    counts = {"int4": 0, "int8": 0}

    def make(name: str, lin: torch.nn.Linear) -> _DecodeLinear:
        w = weight_of(name, lin)
        if (int4 and Int4Linear.fits(lin, INT4_GROUP_SIZE)
                and Int4Linear.grid_error(w, INT4_GROUP_SIZE) <= INT4_MAX_ERROR):
            counts["int4"] += 1
            return Int4Linear.from_weight(w, INT4_GROUP_SIZE)
        counts["int8"] += 1
        return Int8Linear.from_weight(w, act_dtype)

    _swap_linears(model, make)
    return counts
