"""Can the writer's memory help? Train its gates on long book text, then measure.

    # train (resumable: run it again to go on), then measure against local-only
    python benchmarks/writer_memory.py train --out runs/writer-gates --steps 400
    python benchmarks/writer_memory.py eval --gates runs/writer-gates/gates.safetensors \
        --docs 12 --tokens 16384 --out benchmarks/results/smollm2/writer-memory.json

    # the second try: low-rank query/key adapters and the gates, through the memory, on passkeys
    # and book text (infini_cli/training/writer_adapters.py), then the same measures
    python benchmarks/writer_memory.py train-adapters --out runs/writer-adapters --steps 180
    python benchmarks/writer_memory.py eval --adapters runs/writer-adapters/adapters.safetensors \
        --docs 4 --passkey-lengths 4096,8192 --passkey-depths 0,0.5 --trials 5 \
        --out benchmarks/results/smollm2/writer-adapters.json

eval reports, on the books/valid novels (never trained on), the perplexity of each segment of
a 16K-token window streamed with the trained gates' memory against local-only (each segment
alone, as the product's writer reads today) and against the trained gates with a memory that
is never written (what the gates change without anything remembered: a gate also scales the
local attention by 1 - g), and the passkey beyond the writer's window (the key in the first
segment, the question segments later) with local-only and with memory. With --adapters (from
train-adapters) instead of --gates, the same rows for the adapters and their gates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infini_cli.checkpoint import load_checkpoint  # noqa: E402
from infini_cli.quantize import prompt_dtype  # noqa: E402
from infini_cli.registry import resolve_model  # noqa: E402
from infini_cli.tasks.passkey import run_cell  # noqa: E402
from infini_cli.tasks.passkey_prompt import Haystack, PasskeyPromptBuilder  # noqa: E402
from infini_cli.training.writer_adapters import WriterAdapterConfig, apply_adapters, train_adapters  # noqa: E402
from infini_cli.training.writer_memory import WriterMemoryConfig, apply_gates, segment_losses, train_gates  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "books"


def load_writer(name: str):
    path = resolve_model(Path(name))
    return path, load_checkpoint(path, "cpu", kernels="float")


def books_missing() -> bool:
    if not any((SHARED / "train").glob("*.txt")):
        print(f"skipped: no novels in {SHARED / 'train'}")
        return True
    return False


def run_resumable(train: Callable[[], Path], out_dir: str, what: str) -> int:
    """Run a resumable training; Ctrl-C says how to go on (saved after every document: at most
    one document is lost)."""
    try:
        print(f"{what} in {train()}")
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {out_dir}")
        return 130
    return 0


def cmd_train(args) -> int:
    if books_missing():
        return 0
    path, loaded = load_writer(args.writer)
    cfg = WriterMemoryConfig(checkpoint=str(path), out_dir=str(args.out), data_dir=str(SHARED / "train"),
                             steps=args.steps, doc_segments=args.doc_segments, gate_start=args.gate_start,
                             lr=args.lr, seed=args.seed)
    print(f"writer {path.name}: {cfg.steps} steps of one {loaded.config.segment_len}-token segment, "
          f"documents of {cfg.doc_segments} segments; gates only", flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    return run_resumable(lambda: train_gates(loaded.model, loaded.tokenizer, cfg, log=log), cfg.out_dir, "gates")


def cmd_train_adapters(args) -> int:
    if books_missing():
        return 0
    path, loaded = load_writer(args.writer)
    cfg = WriterAdapterConfig(checkpoint=str(path), out_dir=str(args.out), data_dir=str(SHARED / "train"),
                              steps=args.steps, rank=args.rank, lr=args.lr, book_every=args.book_every,
                              seed=args.seed)
    builder = PasskeyPromptBuilder(loaded.tokenizer, Haystack.standard(loaded.tokenizer))
    print(f"writer {path.name}: {cfg.steps} steps of one two-segment document ({loaded.config.segment_len} tokens "
          f"a segment), query/key adapters of rank {cfg.rank} and the gates", flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    return run_resumable(lambda: train_adapters(loaded.model, loaded.tokenizer, builder, cfg, log=log), cfg.out_dir,
                         "adapters")


def valid_windows(tok, n_docs: int, n_tokens: int) -> list[torch.Tensor]:
    """One window per novel: n_tokens + 1 from a tenth of the way in (past the front matter)."""
    out = []
    for f in sorted((SHARED / "valid").glob("*.txt"))[:n_docs]:
        text = f.read_text(encoding="utf-8", errors="replace")
        start = len(text) // 10
        ids = tok.encode(text[start:start + (n_tokens + 1) * 8])
        if len(ids) > n_tokens:
            out.append(torch.tensor([ids[:n_tokens + 1]]))
    return out


def perplexities(model, docs: list[torch.Tensor], use_memory: bool, write: bool = True) -> list[float]:
    """Mean loss of each segment position over the documents, as perplexities."""
    per_doc = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prompt_dtype() == torch.bfloat16):
        for i, d in enumerate(docs):
            per_doc.append(segment_losses(model, d, use_memory=use_memory, write=write))
            print(f"  document {i + 1}/{len(docs)}", file=sys.stderr, flush=True)
    return [math.exp(sum(col) / len(col)) for col in zip(*per_doc)]


def passkey(loaded, lengths: list[int], depths: list[float], trials: int) -> dict:
    builder = PasskeyPromptBuilder(loaded.tokenizer, Haystack.standard(loaded.tokenizer))
    cells = {}
    for n in lengths:
        for d in depths:
            rows = run_cell(loaded, builder, n, d, list(range(trials)), seed=0, device_name="cpu")
            cells[f"{n}@{d:g}"] = {"correct": sum(r.correct for r in rows), "trials": len(rows),
                                   "key_segment": rows[0].key_segment,
                                   "question_segment": rows[0].key_segment + rows[0].memory_writes_between}
    return cells


def cmd_eval(args) -> int:
    if args.gates and args.adapters:
        print("give --gates or --adapters, not both")
        return 2
    if not any((SHARED / "valid").glob("*.txt")):
        print(f"skipped: no novels in {SHARED / 'valid'}")
        return 0
    path, loaded = load_writer(args.writer)
    model, seg = loaded.model, loaded.config.segment_len
    docs = valid_windows(loaded.tokenizer, args.docs, args.tokens)
    lengths = [int(x) for x in args.passkey_lengths.split(",") if x]
    depths = [float(x) for x in args.passkey_depths.split(",") if x]
    t0 = time.perf_counter()
    rows = {"local-only": {"perplexity": perplexities(model, docs, use_memory=False)}}
    if lengths:
        rows["local-only"]["passkey"] = passkey(loaded, lengths, depths, args.trials)
    if args.adapters:
        apply_adapters(model, args.adapters)
        rows["trained adapters and gates, memory never written"] = {
            "perplexity": perplexities(model, docs, True, write=False)}
        rows["memory, trained adapters and gates"] = {"perplexity": perplexities(model, docs, use_memory=True),
                                                      "gates_mean": round(model.gates().mean().item(), 5),
                                                      "gates_max": round(model.gates().max().item(), 5)}
        if lengths:
            rows["memory, trained adapters and gates"]["passkey"] = passkey(loaded, lengths, depths, args.trials)
    if args.gates:
        apply_gates(model, args.gates)
        # the control: the same gates mixing in an empty memory (nothing remembered) everywhere
        rows["trained gates, memory never written"] = {"perplexity": perplexities(model, docs, True, write=False)}
        rows["memory, trained gates"] = {"perplexity": perplexities(model, docs, use_memory=True),
                                         "gates_mean": round(model.gates().mean().item(), 5),
                                         "gates_max": round(model.gates().max().item(), 5)}
        if lengths:
            rows["memory, trained gates"]["passkey"] = passkey(loaded, lengths, depths, args.trials)
    result = {"writer": str(path), "gates": str(args.gates) if args.gates else None,
              "adapters": str(args.adapters) if args.adapters else None, "segment_len": seg,
              "docs": len(docs), "tokens_per_doc": args.tokens, "threads": torch.get_num_threads(),
              "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    print(f"perplexity by segment ({len(docs)} books/valid windows of {args.tokens:,} tokens, segments of {seg}):")
    for name, r in rows.items():
        p = r["perplexity"]
        after = sum(p[1:]) / max(1, len(p) - 1)
        print(f"  {name:48} " + " ".join(f"{x:7.3f}" for x in p) + f"   segments 2+: {after:.3f}")
        r["perplexity_after_first"] = round(after, 4)
        r["perplexity"] = [round(x, 4) for x in p]
        for cell, c in r.get("passkey", {}).items():
            print(f"    passkey {cell}: {c['correct']}/{c['trials']} (key in segment {c['key_segment']}, "
                  f"question in {c['question_segment']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writer", default="smollm2", help="the writer's name or path")
    ap.add_argument("--threads", type=int, default=None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the gates (resumes from --out)")
    tr.add_argument("--out", type=Path, default=Path("runs/writer-gates"))
    tr.add_argument("--steps", type=int, default=400)
    tr.add_argument("--doc-segments", type=int, default=8)
    tr.add_argument("--gate-start", type=float, default=-4.0)
    tr.add_argument("--lr", type=float, default=0.05)
    tr.add_argument("--seed", type=int, default=0)
    ta = sub.add_parser("train-adapters", help="train query/key adapters and the gates (resumes from --out)")
    ta.add_argument("--out", type=Path, default=Path("runs/writer-adapters"))
    ta.add_argument("--steps", type=int, default=180)
    ta.add_argument("--rank", type=int, default=8)
    ta.add_argument("--lr", type=float, default=2e-3)
    ta.add_argument("--book-every", type=int, default=3)
    ta.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("eval", help="perplexity and passkey: trained gates' memory against local-only")
    ev.add_argument("--gates", type=Path, default=None, help="gates.safetensors from train (none: local-only rows)")
    ev.add_argument("--adapters", type=Path, default=None, help="adapters.safetensors from train-adapters")
    ev.add_argument("--docs", type=int, default=12)
    ev.add_argument("--tokens", type=int, default=16384)
    ev.add_argument("--passkey-lengths", default="1024,8192")
    ev.add_argument("--passkey-depths", default="0,0.5")
    ev.add_argument("--trials", type=int, default=5)
    ev.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"train": cmd_train, "train-adapters": cmd_train_adapters, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
