"""A prototype: the writer's decoding step compiled ahead of time (AOTInductor), against eager.

    python benchmarks/bench_decode_aot.py --out benchmarks/results/smollm2/decode-aot.json

`torch.compile` speeds the step up but costs 33-82 s at every start (bench_decode_compiled.py).
Compiled ahead of time, the step is a package built once (it could be built by `infini pull`)
and loaded in a fraction of a second. This measures that route before it is wired into the
product: the seconds to export, compile and load, the package's size, then greedy tokens/s of
the compiled step and of the product's eager Decoder, alternating in one process on the same
decoder buffers (48 tokens after a 512-token prompt of a books/valid novel), and after how
many tokens their greedy outputs part.

The step below is Decoder.step's arithmetic for one token, written to export: the segment's
caches are inputs (one tensor per layer, written in place at the position), attention runs
over the whole buffer with a mask up to the position (the buffer's length is a dynamic
dimension, so one package serves any prompt), and the memory is always read (an empty
memory reads exactly 0, as Decoder's shortcut gives). Decoder's bookkeeping (a full segment
written to memory, buffers grown) is not reproduced: the benchmark stays inside one segment.
Only the layout where decoding attends in bf16 (decode.attention_dtype_for) is covered.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infini_cli.checkpoint import load_checkpoint  # noqa: E402
from infini_cli.decode import Decoder  # noqa: E402
from infini_cli.loading import decode_kernels_for  # noqa: E402
from infini_cli.memory import StreamState, memory_read  # noqa: E402
from infini_cli.model import InfiniTransformer, _rope_table, _swap_halves  # noqa: E402
from infini_cli.quantize import _DecodeLinear  # noqa: E402
from infini_cli.registry import resolve_model  # noqa: E402
from infini_cli.stream import feed  # noqa: E402
from decode_timing import Step, compare, eager_step, write_result  # noqa: E402

VALID = ROOT.parent / "shared" / "data" / "books" / "valid"


class DecodeStep(nn.Module):
    """One token through every layer, written to export (see the module docstring)."""

    def __init__(self, model: InfiniTransformer) -> None:
        super().__init__()
        cfg = model.config
        self.config, self.model = cfg, model
        cos, sin = _rope_table(cfg.segment_len, cfg.head_dim, cfg.rope_theta, torch.device("cpu"))
        self.register_buffer("cos", cos.clone())  # a copy: the cached table is an inference tensor
        self.register_buffer("sin", sin.clone())
        self.register_buffer("gates", torch.stack([torch.sigmoid(b.attn.gate.float()).view(-1, 1, 1)
                                                   for b in model.layers]))

    @staticmethod
    def product(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return lin._kernel(x).to(x.dtype) if isinstance(lin, _DecodeLinear) else F.linear(x, lin.weight)

    def forward(self, tok: torch.Tensor, pos: torch.Tensor, kv: list[torch.Tensor], k_rot: list[torch.Tensor],
                v_att: list[torch.Tensor], M: list[torch.Tensor], z: list[torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        H, G, D, B = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, tok.shape[0]
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        mask = (torch.arange(kv[0].shape[2]) <= pos).view(1, 1, 1, -1)
        h = self.model.embed(tok)
        for i, block in enumerate(self.model.layers):
            qkv = self.product(block.attn.wqkv, block.attn_norm(h)).view(B, H + 2 * G, 1, D)
            qk = qkv[:, :H + G]
            qk_rot = torch.addcmul(qk * cos, _swap_halves(qk), sin)
            kv[i].index_copy_(2, pos, qkv[:, H:])
            k_rot[i].index_copy_(2, pos, qk_rot[:, H:].to(k_rot[i].dtype))
            v_att[i].index_copy_(2, pos, qkv[:, H + G:].to(v_att[i].dtype))
            local = F.scaled_dot_product_attention(qk_rot[:, :H].to(k_rot[i].dtype), k_rot[i], v_att[i],
                                                   attn_mask=mask, enable_gqa=True).to(h.dtype)
            mem = memory_read(qk[:, :H].reshape(B, G, cfg.group_size, D), M[i], z[i]).reshape(B, H, 1, D)
            h = h + self.product(block.attn.wo, torch.lerp(local, mem.to(local.dtype), self.gates[i]).view(B, H * D))
            gate, up = self.product(block.ffn.w13, block.ffn_norm(h)).chunk(2, dim=-1)
            h = h + self.product(block.ffn.w2, F.silu(gate) * up)
        return self.product(self.model.lm_head, self.model.norm(h))


def inputs_of(dec: Decoder, tok: torch.Tensor) -> tuple:
    return (tok.view(-1), torch.tensor([dec.length]), dec.kv, dec.k_rot, dec.v_att, list(dec.M), list(dec.z))


def aot_step(runner) -> Step:
    """The compiled step as a decoding step: it writes the token into the decoder's buffers,
    and the decoder's length moves on (the prototype stays inside one segment)."""
    def step(dec: Decoder, tok: torch.Tensor) -> torch.Tensor:
        logits = runner(*inputs_of(dec, tok))
        dec.length += 1
        return logits

    return step


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writer", default="smollm2", help="the writer's name or path")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens before decoding")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gguf", type=Path, default=None,
                    help="llama.cpp on this GGUF too, the same threads and prompt length (bench_writer's llamacpp rows)")
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    books = sorted(VALID.glob("*.txt"))
    if not books:
        print(f"skipped: no novels in {VALID}")
        return 0
    threads = [int(x) for x in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    path = resolve_model(Path(args.writer))
    loaded = load_checkpoint(path, kernels=decode_kernels_for(path, torch.device("cpu")))
    model, cfg = loaded.model, loaded.config
    ids = loaded.tokenizer.encode(books[0].read_text(encoding="utf-8", errors="replace")[30000:60000])[:args.prompt]
    _, state = feed(model, StreamState.empty(cfg), ids, logits="last")
    fresh = lambda: Decoder(model, state, reserve=args.tokens + 1)  # noqa: E731
    if fresh().v_att is None:
        print("skipped: this prototype covers decoding that attends in bf16 (a CPU with native bf16)")
        return 0
    step = DecodeStep(model).eval()
    length = torch.export.Dim("length", min=2, max=cfg.segment_len)
    cache = [{2: length}] * cfg.n_layers
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(step, inputs_of(fresh(), torch.tensor([ids[-1]])), dynamic_shapes={
            "tok": None, "pos": None, "kv": cache, "k_rot": cache, "v_att": cache,
            "M": [None] * cfg.n_layers, "z": [None] * cfg.n_layers})
    export_s = time.perf_counter() - t0
    package = Path(tempfile.mkdtemp(prefix="decode-aot-")) / "step.pt2"
    t0 = time.perf_counter()
    torch._inductor.aoti_compile_and_package(program, package_path=str(package))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = torch._inductor.aoti_load_package(str(package))
    load_s = time.perf_counter() - t0
    print(f"export {export_s:.1f} s, compile {compile_s:.1f} s, package {os.path.getsize(package) / 1e6:.0f} MB, "
          f"load {load_s:.2f} s", flush=True)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        row = {"threads": n, **compare({"eager": (fresh, eager_step), "aot": (fresh, aot_step(runner))},
                                       ids[-1], args.tokens, args.reps)}
        print(f"threads {n}: eager {row['eager_tokens_per_s']:6.1f}  compiled ahead of time "
              f"{row['aot_tokens_per_s']:6.1f} tokens/s; greedy outputs equal for "
              f"{row['equal_greedy_tokens']}/{args.tokens}", flush=True)
        rows.append(row)
    result = {"writer": str(path), "torch": torch.__version__, "prompt_tokens": len(ids), "tokens": args.tokens,
              "reps": args.reps, "export_s": round(export_s, 1), "compile_s": round(compile_s, 1),
              "package_mb": round(os.path.getsize(package) / 1e6), "load_s": round(load_s, 2), "speed": rows}
    if args.gguf:
        from bench_writer import bench_llamacpp

        result["llamacpp"] = bench_llamacpp(args.gguf, threads, prompt_tokens=args.prompt, reps=args.reps)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
