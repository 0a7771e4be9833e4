"""Paste a passage of one book into another: a haystack that isolates what one passage does.

The model card's screen for numbers that share a digit pastes A Summer in a Canyon's passage of
dates (its lines 5690-5745: Admission Day, "September 9", "1850", "1849") into the grid's novel
after the first paragraph break past character 20,000, so that a 32K prompt holds it:

    python benchmarks/paste_passage.py --out runs/vultures_canyon.txt
    infini passkey-test --lengths 32k --trials 1 --threads 1 --haystack runs/vultures_canyon.txt --out runs/screen/pasted-32k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

VALID = Path("../shared/data/books/valid")


def paste(host: str, passage: str, after_char: int) -> str:
    """host with passage inserted at its first paragraph break at or past after_char."""
    at = host.find("\n\n", after_char)
    if at < 0:
        raise ValueError(f"no paragraph break past character {after_char:,}")
    return host[:at + 2] + passage.rstrip("\n") + "\n\n" + host[at + 2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", type=Path, default=VALID / "1902_the_vultures.txt")
    ap.add_argument("--source", type=Path, default=VALID / "1914_a_summer_in_a_canyon.txt")
    ap.add_argument("--lines", default="5690-5745", help="the passage: first-last line of --source, 1-based")
    ap.add_argument("--after-char", type=int, default=20_000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for p in (args.host, args.source):
        if not p.is_file():
            sys.exit(f"{p}: no such file; pass --host/--source (the books live in ../shared/data/books/valid)")
    first, last = (int(x) for x in args.lines.split("-"))
    lines = args.source.read_text(encoding="utf-8").splitlines(keepends=True)
    passage = "".join(lines[first - 1:last])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(paste(args.host.read_text(encoding="utf-8"), passage, args.after_char), encoding="utf-8")
    print(f"wrote {args.out}: {args.source.name} lines {first}-{last} ({len(passage):,} characters) in {args.host.name}")


if __name__ == "__main__":
    main()
