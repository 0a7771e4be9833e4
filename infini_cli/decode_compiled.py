"""The decoding step compiled ahead of time (AOTInductor): a package built once, loaded in a
fraction of a second, that takes a token through every layer in one call.

Eager decoding spends more on launching ~50 torch calls a layer than on arithmetic at the
135M writer's size, and that overhead does not shrink with threads. Inductor fuses them;
compiled ahead of time (by `infini pull`, prepare below) the cost of compiling is paid once
per machine instead of at every start as with torch.compile (33-82 s here).

DecodeStep is Decoder.step's arithmetic written to export: the segment's caches are inputs
(one tensor per layer, written in place at the position: with one stacked tensor the
functionalized graph copied it whole at every layer's write, 17 tokens/s), attention runs
over the whole buffer with a mask up to the position (the buffer's length is a dynamic
dimension, so one package serves any prompt), and the memory is always read (an empty memory
reads exactly 0, which Decoder skips). CompiledDecoder keeps Decoder's bookkeeping (buffers,
a full segment written to memory, to_state) and runs the package instead of the eager layers.

The package holds no weights: they are the loaded model's own tensors, handed to it by name
at load (user-managed constants), so the weights exist once in memory and the package is a
few MB. It is keyed by what it was built from (the model's layout, the code traced, torch,
the CPU): a stale one is never run (decoding stays eager until `infini pull` builds anew).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decode import Decoder, attention_dtype_for
from .memory import StreamState, memory_read
from .model import InfiniTransformer, _rope_table, _swap_halves
from .quantize import Int4Linear, _DecodeLinear

class DecodeStep(nn.Module):
    """One token of one stream through every layer, written to export (module docstring)."""

    def __init__(self, model: InfiniTransformer) -> None:
        super().__init__()
        cfg = model.config
        self.config, self.model = cfg, model
        cos, sin = _rope_table(cfg.segment_len, cfg.head_dim, cfg.rope_theta, torch.device("cpu"))
        dtype = model.embed.weight.dtype
        self.register_buffer("cos", cos.to(dtype).clone())  # copies: the cached table is an inference tensor
        self.register_buffer("sin", sin.to(dtype).clone())

        # each int4 group size as a named tensor: the kernel's compiled form takes it as one,
        # and a size traced as a number would become a nameless constant of the package that
        # the loader could not hand over (load_compiled)
        for g in sorted({m.group_size for m in model.modules() if isinstance(m, Int4Linear)}):
            self.register_buffer(f"int4_group_{g}", torch.tensor(g))

    def product(self, lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """lin(x) through its kernel, as decode.product_of does eagerly."""
        if isinstance(lin, Int4Linear):
            group = getattr(self, f"int4_group_{lin.group_size}")
            y = torch.ops.quantized.int4mm_packed_weight_cpu(x.to(torch.bfloat16), lin.weight_int4, group,
                                                             lin.scale_offset)
            return y.to(x.dtype)
        return lin._kernel(x).to(x.dtype) if isinstance(lin, _DecodeLinear) else F.linear(x, lin.weight)

    def forward(self, tok: torch.Tensor, pos: torch.Tensor, kv: list[torch.Tensor], k_rot: list[torch.Tensor],
                v_att: list[torch.Tensor], M: list[torch.Tensor], z: list[torch.Tensor],
                gates: torch.Tensor) -> torch.Tensor:
        """tok [1], pos [1] (the position in the segment); per layer kv [1, 2G, n, D] (keys
        before RoPE, then values), k_rot and v_att [1, G, n, D] in the attention's dtype, all
        written at pos; M, z the memory; gates [L, 1, H, 1, 1] the share of the memory's read
        (an input, not the model's: zeros decode local-only). Returns the next logits [1, vocab]."""
        cfg = self.config
        H, G, D, B = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, tok.shape[0]
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        mask = (torch.arange(kv[0].shape[2], device=tok.device) <= pos).view(1, 1, 1, -1)
        h = self.model.embed(tok)
        for i, block in enumerate(self.model.layers):
            qkv = self.product(block.attn.wqkv, block.attn_norm(h)).view(B, H + 2 * G, 1, D)
            qk = qkv[:, :H + G]
            qk_rot = torch.addcmul(qk * cos, _swap_halves(qk), sin)  # apply_rope at one position
            kv[i].index_copy_(2, pos, qkv[:, H:])
            k_rot[i].index_copy_(2, pos, qk_rot[:, H:].to(k_rot[i].dtype))
            v_att[i].index_copy_(2, pos, qkv[:, H + G:].to(v_att[i].dtype))
            local = F.scaled_dot_product_attention(qk_rot[:, :H].to(k_rot[i].dtype), k_rot[i], v_att[i],
                                                   attn_mask=mask, enable_gqa=True).to(h.dtype)
            mem = memory_read(qk[:, :H].reshape(B, G, cfg.group_size, D), M[i], z[i]).reshape(B, H, 1, D)
            out = torch.lerp(local, mem.to(local.dtype), gates[i])
            h = h + self.product(block.attn.wo, out.view(B, H * D))
            gate, up = self.product(block.ffn.w13, block.ffn_norm(h)).chunk(2, dim=-1)
            h = h + self.product(block.ffn.w2, F.silu(gate) * up)
        return self.product(self.model.lm_head, self.model.norm(h))


class StepBuffers(Decoder):
    """Decoder's buffers laid out as DecodeStep takes them: the values kept apart in every
    case, and room for two positions at least (the buffer length's smallest exported size)."""

    separate_values = True

    def __init__(self, model: InfiniTransformer, state: StreamState, use_memory: bool = True, reserve: int = 64,
                 attention_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(model, state, use_memory, reserve, attention_dtype)
        # DecodeStep's gates input, once: zeros read no memory (use_memory off)
        stacked = torch.stack(self.gates)
        self.gate_input = stacked if use_memory else torch.zeros_like(stacked)

    def _allocate(self, capacity: int) -> None:
        super()._allocate(max(capacity, min(2, self.config.segment_len)))

    def arguments(self, tokens: torch.Tensor) -> tuple:
        """DecodeStep's arguments for tokens [1] at the current position."""
        return (tokens.view(1), torch.tensor([self.length], device=self.device), self.kv, self.k_rot, self.v_att,
                list(self.M), list(self.z), self.gate_input)


@dataclass
class CompiledStep:
    """A loaded package and the tensors it reads (the model's weights, RoPE's table)."""

    runner: Any                 # torch._C._aoti.AOTIModelPackageLoader
    module: DecodeStep          # owns the RoPE table the runner points into
    attention_dtype: torch.dtype
    path: Path

    def serves(self, state: StreamState) -> bool:
        return state.batch_size == 1 and state.M[0].device.type == "cpu"

    def run(self, flat: list[torch.Tensor]) -> torch.Tensor:
        return self.runner.boxed_run(flat)[0]


class CompiledDecoder(StepBuffers):
    """A Decoder (same buffers, same bookkeeping, same to_state) whose step runs the package."""

    def __init__(self, compiled: CompiledStep, model: InfiniTransformer, state: StreamState,
                 use_memory: bool = True, reserve: int = 64) -> None:
        super().__init__(model, state, use_memory, reserve, attention_dtype=compiled.attention_dtype)
        self.compiled = compiled

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # the runner takes the arguments flat, in order (the per-layer lists spread out)
        flat = [t for a in self.arguments(tokens) for t in (a if isinstance(a, list) else (a,))]
        return self.compiled.run(flat)


def enabled() -> bool:
    """$INFINI_COMPILED_DECODE=0 turns compiled decoding off (neither built nor used)."""
    return os.environ.get("INFINI_COMPILED_DECODE", "1") != "0"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def package_key(model: InfiniTransformer, step: Optional[DecodeStep] = None) -> str:
    """What a package depends on: the model's layout (config, each layer's kernel, buffer
    shapes and dtypes: not the weights' values, which it does not hold), the attention's
    dtype, the code it was traced from, torch, the CPU. step: DecodeStep(model), if made."""
    from . import memory, model as model_py, quantize

    dtype = model.embed.weight.dtype
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (model_py, memory, quantize))
                          + Path(__file__).read_bytes()).hexdigest()
    layout = {name: [str(t.dtype), list(t.shape)] for name, t in (step or DecodeStep(model)).state_dict().items()}
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, (_DecodeLinear, nn.Linear))}
    facts = {"code": code, "config": dataclasses.asdict(model.config), "layout": layout, "kinds": kinds,
             "attention": str(attention_dtype_for(dtype, torch.device("cpu"))), "torch": torch.__version__,
             "machine": platform.machine(), "cpu": _cpu_flags()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def package_path(model: InfiniTransformer, step: Optional[DecodeStep] = None) -> Path:
    from .registry import data_dir

    return data_dir() / "compiled" / f"decode-{package_key(model, step)[:32]}.pt2"


def build_package(model: InfiniTransformer, path: Path) -> None:
    """Export DecodeStep for `model` and compile it ahead of time into `path` (atomically).
    The weights stay out of the package (they are handed over at load). Raises whatever the
    compiler raises (no C++ compiler, ...)."""
    cfg = model.config
    step = DecodeStep(model).eval()
    example = StepBuffers(model, StreamState.empty(cfg), reserve=2)
    length = torch.export.Dim("length", min=2, max=max(cfg.segment_len, 3))
    per_layer = [{2: length}] * cfg.n_layers
    with torch.no_grad(), warnings.catch_warnings():  # torch's deprecation notes, nothing for the user
        warnings.simplefilter("ignore")
        program = torch.export.export(step, example.arguments(torch.zeros(1, dtype=torch.long)), dynamic_shapes={
            "tok": None, "pos": None, "kv": per_layer, "k_rot": per_layer, "v_att": per_layer,
            "M": [None] * cfg.n_layers, "z": [None] * cfg.n_layers, "gates": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".building-", suffix=".pt2", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=partial, inductor_configs={
                "aot_inductor.package_constants_in_so": False,       # the weights are the model's
                "aot_inductor.use_runtime_constant_folding": True})  # so constants keep their names
        os.chmod(partial, 0o644)  # as any file written here (mkstemp made it private)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def load_compiled(model: InfiniTransformer, path: Optional[Path] = None) -> Optional[CompiledStep]:
    """The package built for `model` on this machine, its constants pointed at the model's own
    tensors; None where compiled decoding is off, the model is not on the CPU, no package is
    built or it does not load (decoding then stays eager)."""
    if not enabled() or model.embed.weight.device.type != "cpu":
        return None
    module = DecodeStep(model).eval()
    path = path or package_path(model, module)
    if not path.is_file():
        return None
    tensors = module.state_dict()
    try:
        # torch's C++ loader straight: torch._inductor.aoti_load_package would import Inductor
        # (1.2 s) and probe the CPU's vector instructions by compiling (2.7 s here) at every
        # start, to compare with what the package was built for; the key already says that
        runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        names = runner.get_constant_fqns()
        if any(n not in tensors for n in names):
            return None
        # (constants, into the inactive buffer, check that all are given, user managed, copy to device)
        runner.load_constants({n: tensors[n] for n in names}, False, True, True, False)
    except (RuntimeError, OSError, AttributeError, TypeError):  # a damaged package, another torch
        return None
    dtype = model.embed.weight.dtype
    return CompiledStep(runner, module, attention_dtype_for(dtype, torch.device("cpu")), path)


def prepare(model: InfiniTransformer, on_status: Callable[[str], None] = lambda s: None) -> tuple[Optional[Path], str]:
    """Build the package for `model` unless one is built that loads: (its path, "") or (None,
    why not). A package that does not load (damaged, cut short) is built again."""
    if not enabled():
        return None, "compiled decoding is off ($INFINI_COMPILED_DECODE=0)"
    if model.embed.weight.device.type != "cpu":
        return None, "not needed: the model is not on the CPU"
    path = package_path(model)
    if path.is_file() and load_compiled(model, path) is not None:
        return path, ""
    on_status("compiling the decoding step for this CPU (once, about a minute)")
    failed = path.with_suffix(".failed")
    try:
        build_package(model, path)
    except Exception as e:  # noqa: BLE001  (a missing compiler, an export the torch cannot do: decoding stays eager)
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        try:  # so that ask does not suggest compiling again (missing_note)
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(why + "\n")
        except OSError:
            pass
        return None, why
    failed.unlink(missing_ok=True)
    return path, ""


def missing_note(model: InfiniTransformer, name: str) -> Optional[str]:
    """One line for a user whose writer decodes eagerly (load_compiled gave None) for want of
    a package that loads (pulled before packages existed; built for another torch, CPU or
    version of this code; damaged); None where compiled decoding is off, the model is not on
    the CPU, or building the package failed here before."""
    if not enabled() or model.embed.weight.device.type != "cpu":
        return None
    if package_path(model).with_suffix(".failed").is_file():
        return None
    return f"`infini pull {name}` compiles {name}'s decoding step for this machine (once, about a minute): faster answers"
