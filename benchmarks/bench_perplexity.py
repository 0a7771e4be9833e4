"""Perplexity on held-out novels: memory on vs off, and the int8 file vs the float model.

    python benchmarks/bench_perplexity.py --model infini_cli/models/infini-small.safetensors \
        --float runs/small/model.safetensors --tokens 50000

Prints a table and writes benchmarks/results/perplexity.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infini_cli.checkpoint import default_model_path, load_checkpoint  # noqa: E402
from infini_cli.evaluate import perplexity_over  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model_path(), help="the shipped (quantized) checkpoint")
    ap.add_argument("--float", dest="float_model", type=Path, default=None, help="the float checkpoint it came from")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "books" / "valid")
    ap.add_argument("--tokens", type=int, default=50_000, help="tokens from the start of each novel")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here (nothing is written without it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(args.data.glob("*.txt"))
    if not files:
        print(f"skipped: no novels in {args.data}")
        return 0
    shipped = load_checkpoint(args.model)
    tok = shipped.tokenizer
    docs = [tok.encode(f.read_text(encoding="utf-8", errors="replace")[: args.tokens * 8])[: args.tokens] for f in files]
    rows = []

    def measure(name: str, model, use_memory: bool) -> None:
        t0 = time.perf_counter()
        p = perplexity_over(model, docs, use_memory)
        rows.append({"model": name, "memory": use_memory, "tokens": p.tokens, "perplexity": round(p.value, 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name:10} memory {'on ' if use_memory else 'off'}  tokens {p.tokens:>9,}  perplexity {p.value:8.3f}",
              flush=True)

    measure(shipped.header.quant.name, shipped.model, True)
    measure(shipped.header.quant.name, shipped.model, False)
    if args.float_model is not None:
        measure("float32", load_checkpoint(args.float_model).model, True)
    result = {"model": str(args.model), "float_model": str(args.float_model) if args.float_model else None,
              "data": str(args.data), "novels": len(files), "tokens_per_novel": args.tokens, "rows": rows}
    on = next(r for r in rows if r["memory"] and r["model"] != "float32")
    off = next(r for r in rows if not r["memory"])
    result["memory_lowers_perplexity_by"] = round(1 - on["perplexity"] / off["perplexity"], 4)
    fl = [r for r in rows if r["model"] == "float32"]
    if fl:
        result["quantized_vs_float"] = round(on["perplexity"] / fl[0]["perplexity"] - 1, 6)  # a fraction: 1e-4 is 0.01%
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
