"""The writer's decoding step compiled ahead of time (decode_compiled, what `infini pull`
builds and ask/summarize then decode through), against the eager Decoder and llama.cpp.

    python benchmarks/bench_decode_aot.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out benchmarks/results/smollm2/decode-aot.json

Builds the package afresh in a temporary folder (the user's is left alone) and reports the
seconds to build and to load it and its size; then greedy tokens/s of the compiled step and
of the eager Decoder, alternating in one process on decoders made from the same stream (48
tokens after a 512-token prompt of a books/valid novel), and after how many tokens their
greedy outputs part; with --gguf, llama.cpp on the same GGUF, threads and prompt length.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infini_cli.decode import Decoder  # noqa: E402
from infini_cli.decode_compiled import CompiledDecoder, build_package, load_compiled  # noqa: E402
from infini_cli.memory import StreamState  # noqa: E402
from infini_cli.stream import feed  # noqa: E402
from decode_timing import compare, eager_step, novel_text, parser, write_result, writer_and_novels  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens before decoding")
    ap.add_argument("--gguf", type=Path, default=None,
                    help="llama.cpp on this GGUF too, the same threads and prompt length (bench_writer's llamacpp rows)")
    args = ap.parse_args(argv)
    threads = [int(x) for x in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    found = writer_and_novels(args.writer)
    if found is None:
        return 0
    path, loaded, books = found
    os.environ["INFINI_COMPILED_DECODE"] = "1"
    model, cfg = loaded.model, loaded.config
    ids = loaded.tokenizer.encode(novel_text(books[0]))[:args.prompt]
    _, state = feed(model, StreamState.empty(cfg), ids, logits="last")
    package = Path(tempfile.mkdtemp(prefix="decode-aot-")) / "step.pt2"
    t0 = time.perf_counter()
    build_package(model, package)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = load_compiled(model, package)
    load_s = time.perf_counter() - t0
    if compiled is None:
        print(f"the package built in {package} does not load")
        return 1
    print(f"build {build_s:.1f} s, package {os.path.getsize(package) / 1e6:.1f} MB, load {load_s:.3f} s", flush=True)
    variants = {"eager": (lambda: Decoder(model, state, reserve=args.tokens + 1), eager_step),
                "compiled": (lambda: CompiledDecoder(compiled, model, state, reserve=args.tokens + 1), eager_step)}
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        row = {"threads": n, **compare(variants, ids[-1], args.tokens, args.reps)}
        print(f"threads {n}: eager {row['eager_tokens_per_s']:6.1f}  compiled {row['compiled_tokens_per_s']:6.1f} "
              f"tokens/s; greedy outputs equal for {row['equal_greedy_tokens']}/{args.tokens}", flush=True)
        rows.append(row)
    result = {"writer": str(path), "torch": torch.__version__, "prompt_tokens": len(ids), "tokens": args.tokens,
              "reps": args.reps, "build_s": round(build_s, 1), "package_mb": round(os.path.getsize(package) / 1e6, 1),
              "load_s": round(load_s, 3), "speed": rows}
    if args.gguf:
        from bench_writer import bench_llamacpp

        result["llamacpp"] = bench_llamacpp(args.gguf, threads, prompt_tokens=args.prompt, reps=args.reps)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
