"""infini batch on Ray: documents/s and tokens/s for 1 and 2 workers, and on a local two-node cluster.

    python benchmarks/bench_batch.py                                   # prints the table (a few minutes)
    python benchmarks/bench_batch.py --out benchmarks/results/batch/batch.json
    python benchmarks/bench_batch.py --no-cluster                      # the local runs only

Takes 20 chapters of the books in ../shared/data/books/valid (split at their "CHAPTER ..."
headings, taken in turn from each book that has them; ~20K-character pieces for a book without
any), writes them into a temporary folder (never into the repository), then runs, each as
its own process and with a fresh cache folder so every run reads every chapter:

1. `infini batch CHAPTERS --read --out rows.jsonl --workers 1` (a local Ray started for the run);
2. the same with `--workers 2`;
3. a local two-node cluster, `ray start --head --num-cpus 1` and a second `ray start --address
   ... --num-cpus 1` on this machine, then `infini batch ... --workers 2 --address HEAD:PORT`,
   and `ray stop` at the end (it stops every Ray on the machine).

Reported per run: the wall time of the whole command (interpreter, Ray's start, the models'
loading, the reading) and documents/s and tokens/s over it; the time to the first row; and
documents/s after it (from the rows' arrival times: the scaling once the workers run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
BOOKS = ROOT.parent / "shared" / "data" / "books" / "valid"
HEADING = re.compile(r"^(?:CHAPTER|Chapter) [IVXLC0-9]+\b.*$", re.M)
PIECE_CHARS = 20_000
POLL_S = 0.05


# ----------------------------------------------------------------------------- chapters

def chapters_of(text: str) -> list[str]:
    """The chapters after each heading (front matter dropped); ~20K-character pieces cut at a
    paragraph break when the book has no headings."""
    starts = [m.start() for m in HEADING.finditer(text)]
    if starts:
        return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)])]
    pieces, at = [], 0
    while at < len(text):
        cut = text.find("\n\n", at + PIECE_CHARS)
        cut = len(text) if cut < 0 else cut
        pieces.append(text[at:cut].strip())
        at = cut
    return [p for p in pieces if p]


def write_chapters(books: Path, into: Path, n: int) -> list[Path]:
    """`n` chapters, the first of each book with headings, then the second of each, and so on."""
    by_book = {}
    for book in sorted(books.glob("*.txt")):
        text = book.read_text(encoding="utf-8")
        if HEADING.search(text):
            by_book[book.stem] = chapters_of(text)
    if not by_book:
        by_book = {b.stem: chapters_of(b.read_text(encoding="utf-8")) for b in sorted(books.glob("*.txt"))}
    into.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i in range(max(len(c) for c in by_book.values())):
        for stem, chapters in by_book.items():
            if i < len(chapters) and len(written) < n:
                path = into / f"{stem}-{i + 1:03d}.txt"
                path.write_text(chapters[i] + "\n", encoding="utf-8")
                written.append(path)
    return written


# ----------------------------------------------------------------------------- runs

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def environment(cache: Path, extra: Optional[dict] = None) -> dict:
    """This checkout first on the path (for the driver and, through `ray start`, its workers)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "INFINI_CACHE_DIR": str(cache), **(extra or {})}


def run_batch(chapters: Path, work: Path, name: str, workers: int, address: Optional[str] = None,
              extra_env: Optional[dict] = None) -> dict:
    """One `infini batch --read` as its own process; the rows' arrival times are polled from --out."""
    out, cache = work / f"{name}.jsonl", work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    out.unlink(missing_ok=True)
    # stderr is a pipe: no progress bar, only the summary line (workers, threads, Ray nodes), kept below
    args = ["batch", str(chapters), "--read", "--out", str(out), "--workers", str(workers)]
    if address:
        args += ["--address", address]
    log = work / f"{name}.stderr"  # a file, not a pipe: nothing can block the run while it is polled
    started = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "infini_cli", *args], env=environment(cache, extra_env),
                                stdout=subprocess.DEVNULL, stderr=err)
        arrivals: list[float] = []
        while proc.poll() is None:
            arrivals += [time.perf_counter() - started] * (_lines(out) - len(arrivals))
            time.sleep(POLL_S)
    seconds = time.perf_counter() - started
    arrivals += [seconds] * (_lines(out) - len(arrivals))
    stderr = log.read_text(errors="replace")
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if proc.returncode != 0 or any("error" in r for r in rows):
        raise SystemExit(f"{name}: infini batch failed (exit {proc.returncode}): {stderr.strip()[-2000:]}")
    tokens = sum(r["tokens"] for r in rows)
    after = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return {"run": name, "workers": workers, "address": address, "docs": len(rows), "tokens": tokens,
            "seconds": round(seconds, 2), "docs_per_second": round(len(rows) / seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1), "first_row_seconds": round(arrivals[0], 2),
            "docs_per_second_after_first_row": round((len(rows) - 1) / after, 3) if after > 0 else None,
            "summary": (stderr.strip().splitlines() or [""])[-1],
            "command": "infini " + " ".join(a if a != str(chapters) else "CHAPTERS" for a in args)
                       .replace(str(out), f"{name}.jsonl")}


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def two_node_cluster(chapters: Path, work: Path) -> dict:
    """`ray start --head` and a second node on this machine, one CPU each; `ray stop` at the end."""
    port = free_port()
    # `ray start` turns on token authentication; the second node and the driver then need it too
    env = environment(work / "cache-cluster", {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")})
    ray = [shutil.which("ray") or "ray", "start", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        head = _check([*ray, "--head", "--port", str(port), "--include-dashboard=false"], env)
        # the address the head itself advertises ("To add another node ... ray start --address='IP:PORT'")
        said = re.search(r"--address='([^']+)'", head)
        address = said.group(1) if said else f"{socket.gethostbyname(socket.gethostname())}:{port}"
        _check([*ray, "--address", address], env)
        return run_batch(chapters, work, "cluster-2-nodes", 2, address, {"RAY_AUTH_MODE": env["RAY_AUTH_MODE"]})
    finally:
        subprocess.run([shutil.which("ray") or "ray", "stop"], env=env, capture_output=True, timeout=120)


def _check(cmd: list[str], env: dict) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout + done.stderr


# ----------------------------------------------------------------------------- report

def table(runs: list[dict]) -> str:
    head = f"{'run':<18} {'workers':>7} {'docs':>5} {'seconds':>8} {'docs/s':>7} {'tokens/s':>9} " \
           f"{'first row s':>11} {'docs/s after':>12}"
    lines = [head, "-" * len(head)]
    for r in runs:
        after = r["docs_per_second_after_first_row"]
        lines.append(f"{r['run']:<18} {r['workers']:>7} {r['docs']:>5} {r['seconds']:>8.1f} "
                     f"{r['docs_per_second']:>7.2f} {r['tokens_per_second']:>9,.0f} {r['first_row_seconds']:>11.1f} "
                     f"{after if after is not None else float('nan'):>12.2f}")
    return "\n".join(lines)


def machine() -> dict:
    import ray
    import torch

    return {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books", type=Path, default=BOOKS,
                    help="Folder of .txt books (default ../shared/data/books/valid).")
    ap.add_argument("--chapters", type=int, default=20, help="How many chapters to read (default 20).")
    ap.add_argument("--no-cluster", action="store_true", help="Skip the two-node cluster run.")
    ap.add_argument("--out", type=Path, help="Also write the results as JSON here (nothing is written without it).")
    args = ap.parse_args()
    if not args.books.is_dir():
        raise SystemExit(f"{args.books}: no such folder of books; pass --books DIR")
    info = machine()
    with tempfile.TemporaryDirectory(prefix="infini-bench-batch-") as tmp:
        work = Path(tmp)
        files = write_chapters(args.books, work / "chapters", args.chapters)
        chapters = {"count": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "files": [f.name for f in files], "source": str(args.books)}
        runs = [run_batch(work / "chapters", work, f"local-{n}-worker{'s' if n > 1 else ''}", n) for n in (1, 2)]
        if not args.no_cluster:
            runs.append(two_node_cluster(work / "chapters", work))
    print(f"{chapters['count']} chapters, {chapters['bytes'] / 1e6:.1f} MB; {info['cpus']} CPUs, "
          f"load average {info['load_average_at_start'][0]} at the start")
    print(table(runs))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_batch.py" + (" --no-cluster" if args.no_cluster else "") + \
                  f" --out {args.out}"
        args.out.write_text(json.dumps({"command": command, "machine": info, "chapters": chapters, "runs": runs},
                                       indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
