"""Reading documents: speed of reader + tokenizer, and peak memory of the whole stream.

    python benchmarks/bench_readers.py --quick              # a minute or two
    nice -n 19 python benchmarks/bench_readers.py           # the README's figures
    python benchmarks/bench_readers.py --model infini_cli/models/infini-small.safetensors   # its tokenizer

Measures
1. reading + tokenizing speed, no model: MB/s for a generated text file, pages/s for a
   generated PDF (and reading alone, to show which part costs what);
2. peak RSS of streaming a generated 5 MB and 500 MB text file and a 2,000-page PDF through
   reader, incremental tokenizer and engine (`read_document`) with a tiny model, each in a
   fresh process (VmHWM: the whole process's peak, model loading included). The promise: the
   large runs' peaks stay within 50 MB of the small one's.

Generated inputs go to --workdir (default /tmp/infini-bench-readers) and are reused when
present; results to benchmarks/results/readers.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1024 * 1024
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no what up out who them some could "
         "committee decided postpone vote spring meeting river stone light winter paper table garden window morning "
         "evening letter history question answer report minister council village harbour mountain journey "
         "naïve café façade Zürich São Paulo").split()


# ----------------------------------------------------------------------------- inputs

def _paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 7)):
        words = rng.choices(WORDS, k=rng.randint(6, 24))
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 99999)))
        s = " ".join(words)
        sentences.append(s[0].upper() + s[1:] + rng.choice(".....?!;"))
    if rng.random() < 0.05:  # some text without spaces, and 3- and 4-byte characters
        sentences.append("会议决定推迟投票，直到春天。委员会同意了。 😀")
    return " ".join(sentences)


def make_text(path: Path, size_mb: float, seed: int = 0) -> Path:
    """English-like text with paragraphs, numbers and some multi-byte characters."""
    target = int(size_mb * MB)
    marker = path.with_suffix(".size")
    if path.exists() and marker.exists() and marker.read_text() == str(target):
        return path
    rng = random.Random(seed)
    # 16 distinct ~1 MB blocks in a random order: varied text, generated in seconds
    blocks = []
    for _ in range(min(16, max(1, int(size_mb)))):
        paras, n = [], 0
        while n < MB:
            p = _paragraph(rng)
            paras.append(p)
            n += len(p.encode()) + 2
        blocks.append(("\n\n".join(paras) + "\n\n").encode())
    with open(path, "wb") as f:
        written = 0
        while written < target:
            b = rng.choice(blocks)
            if written + len(b) > target:  # end on a space, never inside a multi-byte character
                b = b[: b.rfind(b" ", 0, target - written) + 1] or b[:1]
            f.write(b)
            written += len(b)
    marker.write_text(str(target))
    return path


def make_pdf(path: Path, pages: int, seed: int = 0) -> Path:
    if path.exists() and path.with_suffix(".pages").exists() and path.with_suffix(".pages").read_text() == str(pages):
        return path
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    for i in range(pages):
        pdf.add_page()
        text = _paragraph(rng) + "\n\n" + _paragraph(rng)
        text = text.encode("latin-1", "replace").decode("latin-1")  # the core fonts are Latin-1
        pdf.multi_cell(0, 5, f"Page {i + 1}. {text}")
    pdf.output(str(path))
    path.with_suffix(".pages").write_text(str(pages))
    return path


def ensure_model(workdir: Path, model: Optional[str], sample: Path) -> Path:
    """A checkpoint for the runs: --model's tokenizer with a tiny random model of the same vocab."""
    import torch  # noqa: F401  (imported here: generating inputs does not need it)

    from infini_cli.checkpoint import load_checkpoint, save_checkpoint
    from infini_cli.config import ModelConfig
    from infini_cli.model import InfiniTransformer
    from infini_cli.tokenizer import train_tokenizer

    out = workdir / ("tiny-" + (Path(model).stem if model else "bpe4096") + ".safetensors")
    if out.exists():
        return out
    if model:
        tok = load_checkpoint(model).tokenizer
    else:
        text = sample.read_text(encoding="utf-8", errors="replace")[: 4 * MB]
        tok = train_tokenizer((p for p in text.split("\n\n") if p), vocab_size=4096)
    # Tiny but with a long segment: the per-forward overhead of a 16-token segment would make
    # a 500 MB run take hours; memory use does not depend on the segment length's size here.
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      segment_len=512)
    save_checkpoint(out, InfiniTransformer(cfg).init_weights(0).eval(), tok, training={"note": "benchmark, random"})
    return out


# ----------------------------------------------------------------------------- measurements

def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(path: Path, checkpoint: Path, tokenize: bool) -> dict[str, Any]:
    """Reader (+ incremental tokenizer) throughput in this process, no model."""
    from infini_cli.checkpoint import read_header
    from infini_cli.incremental import IncrementalEncoder
    from infini_cli.readers import open_document
    from infini_cli.tokenizer import TextTokenizer

    tok = TextTokenizer.from_json(read_header(checkpoint).tokenizer_json)
    doc = open_document(path)
    t0 = time.perf_counter()
    tokens = 0
    if tokenize:
        for chunk in IncrementalEncoder(tok).encode_stream(doc):
            tokens += len(chunk.ids)
    else:
        for _ in doc:
            pass
    s = time.perf_counter() - t0
    size = path.stat().st_size
    out = {"file": path.name, "kind": doc.kind, "tokenize": tokenize, "seconds": round(s, 2),
           "mb": round(size / MB, 2), "mb_per_s": round(size / MB / s, 2), "chars": doc.chars_read,
           "tokens": tokens or None}
    if doc.kind == "pdf":
        out.update(pages=doc.pages_read, pages_per_s=round(doc.pages_read / s, 1))
    if tokens:
        out["tokens_per_s"] = round(tokens / s)
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One streaming run in a fresh process: checkpoint load, then read_document."""
    if not spec.get("engine", True):
        return child_no_engine(spec)
    import torch

    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.tasks.reading import read_document

    torch.set_num_threads(spec["threads"])
    loaded = load_checkpoint(spec["checkpoint"])
    before = status_mb("VmRSS")
    st = read_document(loaded, spec["path"], quiet=True)
    return {"file": Path(spec["path"]).name, "kind": st.kind, "mb": round(st.bytes / MB, 1), "pages": st.pages,
            "tokens": st.tokens, "seconds": round(st.seconds, 1), "tokens_per_s": round(st.tokens_per_second),
            "mb_per_s": round(st.bytes / MB / st.seconds, 2), "rss_before_stream_mb": round(before, 1),
            "peak_rss_mb": round(status_mb("VmHWM"), 1), "exact_tokenization": st.exact_tokenization,
            "warnings": st.warnings}


def child_no_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """Reader and incremental tokenizer only (no model is loaded): their own peak memory."""
    from infini_cli.checkpoint import read_header
    from infini_cli.incremental import IncrementalEncoder
    from infini_cli.readers import open_document
    from infini_cli.tokenizer import TextTokenizer

    tok = TextTokenizer.from_json(read_header(spec["checkpoint"]).tokenizer_json)
    before = status_mb("VmRSS")
    doc = open_document(spec["path"])
    t0 = time.perf_counter()
    tokens = sum(len(c.ids) for c in IncrementalEncoder(tok).encode_stream(doc))
    s = time.perf_counter() - t0
    return {"file": Path(spec["path"]).name, "kind": doc.kind, "mb": round(doc.bytes_read / MB, 1),
            "pages": doc.pages_read if doc.kind == "pdf" else None, "tokens": tokens, "seconds": round(s, 1),
            "tokens_per_s": round(tokens / s), "mb_per_s": round(doc.bytes_read / MB / s, 2),
            "rss_before_stream_mb": round(before, 1), "peak_rss_mb": round(status_mb("VmHWM"), 1)}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child run failed for {spec['path']}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report

def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title="reading + tokenizing (no model)")
    for col in ("file", "what", "MB", "pages", "seconds", "MB/s", "pages/s", "tokens/s"):
        t.add_column(col, justify="right" if col not in ("file", "what") else "left")
    for r in report["speed"]:
        t.add_row(r["file"], "read + tokenize" if r["tokenize"] else "read only", f"{r['mb']:.1f}",
                  str(r.get("pages", "")), f"{r['seconds']:.1f}", f"{r['mb_per_s']:.2f}",
                  str(r.get("pages_per_s", "")), f"{r.get('tokens_per_s', 0) or '':,}" if r.get("tokens_per_s") else "")
    c.print(t)
    for key, title in (("stream", "reader + tokenizer + engine (tiny model)"),
                       ("no_engine", "reader + tokenizer only (no model)")):
        if not report[key]:
            continue
        t = Table(title=f"peak RSS streaming through {title}, each in a fresh process")
        for col in ("file", "MB", "pages", "tokens", "seconds", "tokens/s", "RSS before MB", "peak RSS MB"):
            t.add_column(col, justify="right" if col != "file" else "left")
        for r in report[key]:
            t.add_row(r["file"], f"{r['mb']:.1f}", str(r["pages"] or ""), f"{r['tokens']:,}", f"{r['seconds']:.1f}",
                      f"{r['tokens_per_s']:,}", f"{r['rss_before_stream_mb']:.1f}", f"{r['peak_rss_mb']:.1f}")
        c.print(t)
        v = report["verdict"][key]
        c.print(f"largest peak minus the small text's: {v['max_peak_minus_small_mb']:+.1f} MB "
                f"({'within' if v['within_50mb'] else 'NOT within'} 50 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: 1 and 20 MB text, 200 pages")
    ap.add_argument("--model", help="take the tokenizer from this checkpoint (default: train a 4096-token BPE)")
    ap.add_argument("--large-mb", type=float, default=None, help="size of the large text file (default 500)")
    ap.add_argument("--tokenize-only-mb", type=float, default=0,
                    help="also stream a text file of this size through reader and tokenizer only (0: skip)")
    ap.add_argument("--pages", type=int, default=None, help="pages of the generated PDF (default 2000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the streaming runs")
    ap.add_argument("--workdir", default="/tmp/infini-bench-readers")
    ap.add_argument("--out", default=None, help="write the results JSON here (nothing is written without it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    small_mb, large_mb, pages = (1, 20, 200) if args.quick else (5, 500, 2000)
    large_mb = args.large_mb or large_mb
    pages = args.pages or pages
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()],
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    log(f"generating inputs in {work} ...")
    small = make_text(work / f"text-{small_mb:g}mb.txt", small_mb, seed=1)
    large = make_text(work / f"text-{large_mb:g}mb.txt", large_mb, seed=2)
    pdf = make_pdf(work / f"doc-{pages}p.pdf", pages, seed=3)
    huge = make_text(work / f"text-{args.tokenize_only_mb:g}mb.txt", args.tokenize_only_mb, seed=4) \
        if args.tokenize_only_mb else None
    ckpt = ensure_model(work, args.model, small)

    log("speed: reading and tokenizing ...")
    rows = [speed(small, ckpt, False), speed(small, ckpt, True), speed(pdf, ckpt, False), speed(pdf, ckpt, True)]
    stream = []
    for path in (small, large, pdf):
        log(f"streaming {path.name} in a fresh process ...")
        stream.append(run_child({"path": str(path), "checkpoint": str(ckpt), "threads": args.threads}))
        log(f"  {stream[-1]}")
    no_engine = []
    if huge is not None:
        for path in (small, huge):
            log(f"streaming {path.name} through reader and tokenizer only, in a fresh process ...")
            no_engine.append(run_child({"path": str(path), "checkpoint": str(ckpt), "engine": False}))
            log(f"  {no_engine[-1]}")

    def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
        if len(runs) < 2:
            return {}
        worst = max(r["peak_rss_mb"] for r in runs[1:]) - runs[0]["peak_rss_mb"]
        return {"small_peak_mb": runs[0]["peak_rss_mb"], "max_peak_minus_small_mb": round(worst, 1),
                "within_50mb": worst <= 50}

    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    **started, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "tokenizer": args.model or "BPE trained on the generated text, 4096 tokens",
        "model": "random tiny model: d_model 64, 2 layers, 4 heads (2 kv), segment 512; "
                 f"{args.threads} torch thread(s)",
        "speed": rows,
        "stream": stream,
        "no_engine": no_engine,
        "verdict": {"stream": verdict(stream), "no_engine": verdict(no_engine)},
    }
    print_report(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
