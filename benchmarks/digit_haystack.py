"""A digit-dense haystack that is not a novel: server logs, measurement tables, invoices,
release notes and API docs, generated from a seed.

A passkey's digits must be told apart from the numbers around it; novels have few numbers,
technical text is full of them (pydoc text of the standard library cost the bundled reader
3 of 22 keys at 32K, each one digit wrong). This writes such a text to --out, never into the
repository, with its share of digits printed; the passkey grid then runs on it:

    python benchmarks/digit_haystack.py --out /tmp/digits.txt
    infini passkey-test --haystack /tmp/digits.txt --lengths 1k,8k,32k,128k --trials 2 --threads 1 \
        --out benchmarks/results/infini-mini/passkey-digits

`--pydoc` writes instead the text pydoc gives for a fixed list of standard-library modules
(technical prose with some numbers: 1.2% digits), the haystack the fault was found with.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

HOSTS = ["api", "worker", "db", "cache", "edge", "batch", "auth", "search"]
VERBS = ["processed", "received", "flushed", "rejected", "indexed", "replicated", "compacted", "scheduled"]
UNITS = ["ms", "MB", "KB", "requests", "rows", "files", "jobs", "bytes"]
ITEMS = ["bolts", "cable", "valves", "paper", "toner", "filters", "sensors", "brackets"]
FUNCS = ["read", "seek", "encode", "split", "pack", "digest", "resize", "lookup"]


def log_line(r: random.Random) -> str:
    return (f"{2000 + r.randrange(30)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
            f"{r.randrange(24):02d}:{r.randrange(60):02d}:{r.randrange(60):02d} {r.choice(HOSTS)}-{r.randrange(64)} "
            f"{r.choice(VERBS)} {r.randrange(100000)} {r.choice(UNITS)} in {r.randrange(1, 9999)} ms "
            f"(pid {r.randrange(1000, 65535)}, exit {r.randrange(4)}).")


def table_row(r: random.Random) -> str:
    vals = " | ".join(f"{r.uniform(0, 1000):.{r.randint(0, 3)}f}" for _ in range(r.randint(3, 6)))
    return f"Row {r.randrange(1, 500)}: {vals}."


def invoice(r: random.Random) -> str:
    n = r.randint(2, 40)
    price = r.uniform(0.5, 900)
    return (f"Invoice {r.randrange(10000, 99999)} of {r.randint(1, 28)} March {1990 + r.randrange(35)}: "
            f"{n} units of {r.choice(ITEMS)} at {price:.2f} each, total {n * price:.2f}, "
            f"account {r.randrange(10**7, 10**8)}.")


def release_note(r: random.Random) -> str:
    return (f"Version {r.randrange(10)}.{r.randrange(40)}.{r.randrange(20)} fixes issue {r.randrange(100, 99999)} "
            f"and raises the limit from {r.choice([64, 128, 256, 512, 1024, 4096])} to "
            f"{r.choice([2048, 8192, 16384, 65536])}.")


def api_doc(r: random.Random) -> str:
    f = r.choice(FUNCS)
    return (f"{f}(buf, offset={r.randrange(0, 4096)}, size={r.choice([16, 32, 64, 128])}) returns "
            f"a tuple of {r.randint(2, 5)} values; error code {r.randrange(1, 255)} on line {r.randrange(1, 3000)}.")


def digit_text(n_chars: int, seed: int) -> str:
    r = random.Random(seed)
    kinds = [log_line, table_row, invoice, release_note, api_doc]
    out: list[str] = []
    size = 0
    while size < n_chars:
        para = " ".join(r.choice(kinds)(r) for _ in range(r.randint(3, 8)))
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out) + "\n"


PYDOC_MODULES = ["os", "re", "datetime", "decimal", "struct", "socket", "array", "zlib", "time", "calendar",
                 "statistics", "fractions", "math", "string", "binascii", "ipaddress", "codecs", "locale"]


def pydoc_text() -> str:
    import importlib
    import pydoc

    import re

    text = "\n\n".join(pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in PYDOC_MODULES)
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses differ from run to run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the text")
    ap.add_argument("--chars", type=int, default=600_000, help="its length in characters (a haystack is cycled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pydoc", action="store_true", help="pydoc's text of standard-library modules instead")
    args = ap.parse_args()
    text = pydoc_text() if args.pydoc else digit_text(args.chars, args.seed)
    args.out.write_text(text, encoding="utf-8")
    digits = sum(c.isdigit() for c in text)
    print(f"wrote {args.out}: {len(text):,} characters, {digits / len(text):.1%} digits")


if __name__ == "__main__":
    main()
