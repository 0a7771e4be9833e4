"""The writer's decoding step eager against torch.compile'd (inductor), side by side.

    python benchmarks/bench_decode_compiled.py --out benchmarks/results/smollm2/decode-compiled.json

What a compiled decode step would buy and cost: the seconds from the first call to the first
token (tracing and code generation; inductor's on-disk cache starts empty unless --warm-cache),
then greedy tokens/s after a prompt (a books/valid novel), medians of eager and compiled runs
alternating in one process, and after how many tokens the two greedy outputs part. The product
decodes eager; this measures whether compiling would close the gap to llama.cpp (README,
"Speed").
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
from infini_cli.memory import StreamState  # noqa: E402
from infini_cli.stream import feed  # noqa: E402
from decode_timing import compare, eager_step, novel_text, parser, write_result, writer_and_novels  # noqa: E402


def compiled_step():
    """Decoder.step compiled once for every decoder (shapes dynamic: the segment fills a token
    a step). Compiled under no_grad: inductor cannot trace inference_mode's tensors, so the
    decoder's RoPE table (made under inference_mode by the prompt's forward) is copied first."""
    raw = Decoder.step.__wrapped__  # the undecorated method (inference_mode wraps it)
    fn = torch.compile(raw, dynamic=True)

    def step(dec: Decoder, tok: torch.Tensor) -> torch.Tensor:
        if not getattr(dec, "_tables_copied", False):
            dec.cos, dec.sin, dec._tables_copied = dec.cos.clone(), dec.sin.clone(), True
        with torch.no_grad():
            return fn(dec, tok)

    return step


def main(argv: Optional[list[str]] = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens before decoding")
    ap.add_argument("--warm-cache", action="store_true", help="use inductor's on-disk cache as it is")
    args = ap.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    threads = [int(x) for x in args.threads.split(",")]
    torch.set_num_threads(threads[0])
    found = writer_and_novels(args.writer)
    if found is None:
        return 0
    path, loaded, books = found
    ids = loaded.tokenizer.encode(novel_text(books[0]))[:args.prompt]
    _, state = feed(loaded.model, StreamState.empty(loaded.config), ids, logits="last")
    step = compiled_step()
    t0 = time.perf_counter()
    step(Decoder(loaded.model, state), torch.tensor([ids[-1]]))
    compile_s = time.perf_counter() - t0
    print(f"first compiled step (tracing and compiling): {compile_s:.1f} s", flush=True)
    fresh = lambda: Decoder(loaded.model, state)  # noqa: E731
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        row = {"threads": n, **compare({"eager": (fresh, eager_step), "compiled": (fresh, step)},
                                       ids[-1], args.tokens, args.reps)}
        print(f"threads {n}: eager {row['eager_tokens_per_s']:6.1f}  compiled {row['compiled_tokens_per_s']:6.1f} "
              f"tokens/s; greedy outputs equal for {row['equal_greedy_tokens']}/{args.tokens}", flush=True)
        rows.append(row)
    write_result(args.out, {"writer": str(path), "torch": torch.__version__, "prompt_tokens": len(ids),
                            "tokens": args.tokens, "reps": args.reps,
                            "inductor_cache": "warm" if args.warm_cache else "empty",
                            "first_compiled_step_s": round(compile_s, 1), "speed": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
