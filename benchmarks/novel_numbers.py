"""Passkey accuracy per novel against the numbers in its haystack.

Run the sweep first, one passkey test per novel of books/valid at 128K tokens:

    for f in ../shared/data/books/valid/*.txt; do
      infini passkey-test --lengths 128k --trials 1 --threads 1 --quiet --haystack "$f" \
        --out benchmarks/results/infini-mini/novels-128k/$(basename "$f" .txt)
    done
    python benchmarks/novel_numbers.py

It prints a Markdown table (fewest numbers first) and writes summary.json beside the results.
The numbers are counted in exactly the haystack text a 128K prompt uses (its sentences,
cycled when the book is shorter).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infini_cli.checkpoint import default_model_path, read_header  # noqa: E402
from infini_cli.tasks.passkey_prompt import Haystack  # noqa: E402
from infini_cli.tokenizer import TextTokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/infini-mini/novels-128k"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/books/valid"))
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--tokens", type=int, default=131072, help="prompt length the sweep used")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder; pass --data with the books/valid folder")
    tok = TextTokenizer.from_json(read_header(args.model).tokenizer_json)  # the header alone, no weights
    rows = []
    for book in sorted(args.data.glob("*.txt")):
        trials_file = args.results / book.stem / "trials.jsonl"
        if not trials_file.exists():
            continue
        haystack = Haystack.from_file(tok, book)
        n = haystack.sentences_within(args.tokens)
        text = "".join(tok.decode(chunk) for chunk in haystack.iter_chunks(0, n))
        trials = [json.loads(line) for line in trials_file.read_text().splitlines() if line.strip()]
        rows.append({"novel": book.stem, "book_tokens": haystack.cycle_tokens,
                     "numbers_in_haystack": len(re.findall(r"\d+", text)),
                     "right": sum(t["correct"] for t in trials), "trials": len(trials)})
    if not rows:
        sys.exit(f"{args.results}: no sweep results; run the passkey tests in this script's docstring first")
    rows.sort(key=lambda r: (r["numbers_in_haystack"], r["novel"]))
    print("| novel | tokens in the book | numbers in the haystack | right |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['novel']} | {r['book_tokens']:,} | {r['numbers_in_haystack']} | {r['right']}/{r['trials']} |")
    right, trials = sum(r["right"] for r in rows), sum(r["trials"] for r in rows)
    print(f"\nall: {right}/{trials} ({right / trials:.1%})")
    (args.results / "summary.json").write_text(json.dumps({"tokens": args.tokens, "novels": rows}, indent=1))


if __name__ == "__main__":
    main()
