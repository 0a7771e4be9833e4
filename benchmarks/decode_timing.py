"""What the decoding benchmarks share: greedy tokens/s of decoding variants run alternately in
one process (this machine's speed drifts 20-30% between runs minutes apart, so variants are
compared within a run only), where their greedy outputs part, and the results file."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from infini_cli.checkpoint import LoadedModel, load_checkpoint
from infini_cli.decode import Decoder
from infini_cli.loading import decode_kernels_for
from infini_cli.registry import resolve_model

VALID = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "books" / "valid"

Step = Callable[[Decoder, torch.Tensor], torch.Tensor]  # (decoder, tokens [B]) -> logits [B, vocab]


def parser(doc: Optional[str]) -> argparse.ArgumentParser:
    """The options every decoding benchmark takes (--writer, --threads, --reps, --tokens, --out);
    each adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writer", default="smollm2", help="the writer's name or path")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    return ap


def writer_and_novels(name: str) -> Optional[tuple[Path, LoadedModel, list[Path]]]:
    """(the writer's path, the writer loaded as the product loads it on the CPU, the books/valid
    novels); None, after saying so, where there are no novels."""
    books = sorted(VALID.glob("*.txt"))
    if not books:
        print(f"skipped: no novels in {VALID}")
        return None
    path = resolve_model(Path(name))
    return path, load_checkpoint(path, kernels=decode_kernels_for(path, torch.device("cpu"))), books


def novel_text(book: Path) -> str:
    """The stretch of a novel the decoding benchmarks prompt with (past its front matter)."""
    return book.read_text(encoding="utf-8", errors="replace")[30000:60000]


def eager_step(dec: Decoder, tok: torch.Tensor) -> torch.Tensor:
    return dec.step(tok)


def greedy(dec: Decoder, first: int, tokens: int, step: Step = eager_step) -> tuple[float, list[int]]:
    """tokens/s and the greedy tokens of `tokens` steps after the token `first`."""
    tok, out = torch.tensor([first]), []
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(tokens):
            tok = step(dec, tok).argmax(-1)
            out.append(int(tok))
    return tokens / (time.perf_counter() - t0), out


def compare(variants: dict[str, tuple[Callable[[], Decoder], Step]], first: int, tokens: int, reps: int) -> dict:
    """Each variant (a fresh decoder, its step) decodes `tokens` greedy tokens after `first`,
    reps times, the variants alternating, each run after one warm step on a decoder of its
    own. Returns "<name>_tokens_per_s" (the median) for each, and "equal_greedy_tokens": after
    how many tokens the first two variants' outputs part."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    outs: dict[str, list[int]] = {}
    for _ in range(reps):
        for name, (fresh, step) in variants.items():
            with torch.no_grad():
                step(fresh(), torch.tensor([first]))  # warm
            rate, outs[name] = greedy(fresh(), first, tokens, step)
            rates[name].append(rate)
    a, b = (outs[name] for name in list(variants)[:2])
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), tokens)
    return {"equal_greedy_tokens": same, **{f"{k}_tokens_per_s": round(statistics.median(v), 1) for k, v in rates.items()}}


def write_result(out: Optional[Path], result: dict) -> None:
    """The results JSON, where --out asked for one."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
