"""The writer's decoding with its attention in float32 against bfloat16, side by side.

    python benchmarks/bench_decode_attention.py --out benchmarks/results/smollm2/decode-attention.json

speed: greedy tokens/s after prompts of several lengths (a books/valid novel), medians of
alternating runs in one process, and after how many tokens the two greedy outputs part;
perplexity: the general forward over 8 windows of 1,024 tokens (4 books/valid novels) with
every attention in float32, then in bf16 (the same arithmetic a decoding step does).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import infini_cli.model as model_module  # noqa: E402
from infini_cli.decode import Decoder  # noqa: E402
from infini_cli.memory import StreamState  # noqa: E402
from infini_cli.stream import feed  # noqa: E402
from decode_timing import compare, eager_step, novel_text, parser, write_result, writer_and_novels  # noqa: E402
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def speed(loaded, text: str, prompts: list[int], threads: list[int], reps: int, tokens: int) -> list[dict]:
    rows = []
    ids_all = loaded.tokenizer.encode(text)
    for P in prompts:
        ids = ids_all[:P]
        _, state = feed(loaded.model, StreamState.empty(loaded.config), ids, logits="last")
        variants = {name: (lambda dt=dt: Decoder(loaded.model, state, attention_dtype=dt), eager_step)
                    for name, dt in DTYPES.items()}
        for n in threads:
            torch.set_num_threads(n)
            row = {"prompt_tokens": P, "threads": n, **compare(variants, ids[-1], tokens, reps)}
            print(f"prompt {P:5} threads {n}: float32 {row['float32_tokens_per_s']:6.1f}  bf16 "
                  f"{row['bfloat16_tokens_per_s']:6.1f} tokens/s; greedy outputs equal for "
                  f"{row['equal_greedy_tokens']}/{tokens}", flush=True)
            rows.append(row)
    return rows


def perplexity(loaded, windows: list[list[int]]) -> dict:
    original = F.scaled_dot_product_attention

    def in_bf16(q, k, v, **kw):
        return original(q.bfloat16(), k.bfloat16(), v.bfloat16(), **kw).to(q.dtype)

    out = {}
    try:
        for name in DTYPES:
            model_module.F.scaled_dot_product_attention = original if name == "float32" else in_bf16
            nll = n = 0.0
            with torch.inference_mode():
                for w in windows:
                    logits, _ = feed(loaded.model, StreamState.empty(loaded.config), w)
                    nll += F.cross_entropy(logits[0, :-1].float(), torch.tensor(w[1:]), reduction="sum").item()
                    n += len(w) - 1
            out[name] = round(math.exp(nll / n), 3)
            print(f"perplexity, attention in {name}: {out[name]}", flush=True)
    finally:
        model_module.F.scaled_dot_product_attention = original
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--prompts", default="512,1024,1500")
    args = ap.parse_args(argv)
    found = writer_and_novels(args.writer)
    if found is None:
        return 0
    path, loaded, books = found
    text = novel_text(books[0])
    rows = speed(loaded, text, [int(x) for x in args.prompts.split(",")], [int(x) for x in args.threads.split(",")],
                 args.reps, args.tokens)
    torch.set_num_threads(max(int(x) for x in args.threads.split(",")))
    windows = []
    for b in books[:4]:
        ids = loaded.tokenizer.encode(b.read_text(encoding="utf-8", errors="replace")[20000:60000])
        windows += [ids[i * 1024:(i + 1) * 1024] for i in range(2)]
    write_result(args.out, {"writer": str(path), "speed": rows, "perplexity": perplexity(loaded, windows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
