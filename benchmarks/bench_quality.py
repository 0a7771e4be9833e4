"""Quality of `infini ask` and `infini summarize` against baselines computed in the same run.

    python benchmarks/bench_quality.py --quick                  # a few minutes: subsets
    taskset -c 1 nice -n 10 python benchmarks/bench_quality.py --threads 1   # the README's figures

Sections (--sections, default all):
- ask: every SQuAD v1.1 dev article joined into one document (paragraphs separated by a blank
  line), read once through the model; for each of its questions, the share whose gold answer
  (any of the given answers, normalised) appears in the top-1 and top-3 evidence sentences.
  Baseline: rank_bm25's BM25Okapi over the same sentences (lower-cased \\w+ words). "ours"
  is the shipped ranking (ask_scoring.AskPool and QuestionScorer, from the saved sentences as a
  second question would see them); "+ model" adds the model's question log-likelihood gain
  over the top candidates (model_scores.question_gain) at the weight given by --model-weight.
- summarize: SQuALITY test stories, the 'What is the plot of the story?' references; ROUGE-1/2/L
  F1 (rouge_score, use_stemmer=True, best of the four references per story, as score_multi),
  at --words words for every system. Baselines: the first N words (lead) and TextRank (sentence
  graph over shared words, PageRank, best sentences in document order), both cut to N words.
- long: a novel from books/valid with an invented fact sentence inserted at 10%, 50% and 90%
  depth; two questions per fact (one naming its rare words, one paraphrase): how often the
  top-3 evidence holds the fact, and the time of the first (reading) and second (cached) question.
- cache: a 1M-token document (valid novels joined): `infini ask` wall time for the first
  question (reads the document) and the second (from the cache), as separate processes.

Data: ../shared/data (or --data); the script skips cleanly when it is absent. Results:
benchmarks/results/quality.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infini_cli.tasks.lexical import words  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_MODEL = ROOT / "models" / "infini-small.safetensors"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def norm(s: str) -> str:
    return " ".join(words(s))


# ----------------------------------------------------------------------------- model

def get_model(path: Optional[Path], workdir: Path, threads: Optional[int]):
    """The checkpoint to measure; without one, a random tiny model for a smoke test only."""
    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.device import set_threads

    set_threads(threads)
    note = None
    if path is None:
        path = DEFAULT_MODEL
    if not path.exists():
        if path != DEFAULT_MODEL:
            raise SystemExit(f"error: {path}: no such checkpoint")
        import dataclasses

        from infini_cli.checkpoint import save_checkpoint
        from infini_cli.config import preset
        from infini_cli.model import InfiniTransformer
        from infini_cli.tokenizer import train_tokenizer

        path = workdir / "smoke-tiny.safetensors"
        if not path.exists():
            tok = train_tokenizer(["The quick brown fox jumps over the lazy dog. " * 20], vocab_size=300)
            cfg = dataclasses.replace(preset("tiny"), vocab_size=tok.vocab_size)
            save_checkpoint(path, InfiniTransformer(cfg).init_weights(0), tok, training={"steps": 0})
        note = (f"SMOKE TEST: no checkpoint at {DEFAULT_MODEL}; a random tiny model was used, so the model-based "
                "rows and the timings say nothing about the real model (the lexical rows are unaffected)")
        log(note)
    return load_checkpoint(path), path, note


def read_text(loaded, text: str, workdir: Path, name: str, collect: bool = True):
    """Read a text through the product path (`read_or_load`, no cache); returns (read, passages)."""
    from infini_cli.readers import open_document
    from infini_cli.tasks.reading import read_or_load

    p = workdir / name
    p.write_text(text, encoding="utf-8")
    ps: list = []
    consumers = [lambda q, idx: ps.append(q)] if collect else []
    rd = read_or_load(loaded, open_document(p), consumers, use_cache=False, quiet=True)
    return rd, ps


# ----------------------------------------------------------------------------- ask (SQuAD)

# Articles on which the model-rerank weight was chosen (with the bundled model, before this run).
TUNING_ARTICLES = (0, 2, 4, 6)


def bench_ask(loaded, data_dir: Path, workdir: Path, quick: bool, model_weight: float, rerank: int) -> dict:
    from rank_bm25 import BM25Okapi

    from infini_cli.tasks.ask_scoring import AskPool, AskWeights, QuestionScorer
    from model_scores import question_gain

    articles = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text())["data"]
    if quick:
        articles = articles[:3]
    counts = Counter()
    held = Counter()  # the same counts over the articles not used to choose the model weight
    t0 = time.perf_counter()
    read_s = 0.0
    for ai, art in enumerate(articles):
        before = Counter(counts)
        text = "\n\n".join(p["context"] for p in art["paragraphs"])
        rd, ps = read_text(loaded, text, workdir, "squad-article.txt")
        read_s += rd.seconds
        base = BM25Okapi([words(p.text) for p in ps])
        normed = [norm(p.text) for p in ps]
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                q = qa["question"]
                golds = [g for g in (norm(a["text"]) for a in qa["answers"]) if g]

                def hit(idx: list[int]) -> bool:
                    return any(g in normed[i] for i in idx for g in golds)

                sc = base.get_scores(words(q))
                order = sorted(range(len(ps)), key=lambda i: -sc[i])
                counts["bm25@1"] += hit(order[:1])
                counts["bm25@3"] += hit(order[:3])
                pool = AskPool(QuestionScorer(q, AskWeights()))
                for p in ps:
                    pool.add(p, rd.index.stats)
                ranked = pool.ranked(rd.index.stats)
                ours = [p.index for p in ranked]
                counts["ours@1"] += hit(ours[:1])
                counts["ours@3"] += hit(ours[:3])
                if model_weight:
                    head = ranked[:rerank]
                    gains = question_gain(loaded, rd.state, head, q) if head else []
                    rescored = sorted(zip(head, gains), key=lambda x: (-(x[0].score + model_weight * x[1]), x[0].index))
                    order2 = [p.index for p, _ in rescored] + ours[len(head):]
                    counts["model@1"] += hit(order2[:1])
                    counts["model@3"] += hit(order2[:3])
                counts["n"] += 1
        if ai not in TUNING_ARTICLES:
            held.update({k: v - before[k] for k, v in counts.items()})
        log(f"ask: article {ai + 1}/{len(articles)}, {counts['n']} questions, "
            f"ours top-1 {counts['ours@1'] / counts['n']:.3f} vs bm25 {counts['bm25@1'] / counts['n']:.3f}")
    n = counts["n"]
    rows = {"BM25 (rank_bm25, words)": (counts["bm25@1"] / n, counts["bm25@3"] / n),
            "ours (lexical)": (counts["ours@1"] / n, counts["ours@3"] / n)}
    if model_weight:
        rows[f"ours + model rerank (w={model_weight:g}, top {rerank})"] = (counts["model@1"] / n, counts["model@3"] / n)
    out_held = {}
    if held["n"] and model_weight:
        def shares(key: str) -> dict:
            return {"top1": round(held[f"{key}@1"] / held["n"], 4), "top3": round(held[f"{key}@3"] / held["n"], 4)}

        out_held = {"questions": held["n"], "articles_excluded": list(TUNING_ARTICLES),
                    "ours": shares("ours"), "model": shares("model")}
    return {"articles": len(articles), "questions": n, "seconds": round(time.perf_counter() - t0, 1),
            "held_out": out_held,
            "read_seconds": round(read_s, 1),
            "rows": {k: {"top1": round(a, 4), "top3": round(b, 4)} for k, (a, b) in rows.items()}}


# ----------------------------------------------------------------------------- summarize (SQuALITY)

def textrank(sents: list[str], n_words: int) -> str:
    W = [set(words(s)) for s in sents]
    n = len(sents)
    nb: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if len(W[i]) > 1 and len(W[j]) > 1:
                o = len(W[i] & W[j])
                if o:
                    w = o / (math.log(len(W[i])) + math.log(len(W[j])))
                    nb[i].append((j, w))
                    nb[j].append((i, w))
    tot = [sum(w for _, w in nb[i]) or 1.0 for i in range(n)]
    pr = [1.0] * n
    for _ in range(30):
        pr = [0.15 + 0.85 * sum(pr[j] * w / tot[j] for j, w in nb[i]) for i in range(n)]
    chosen, total = [], 0
    for i in sorted(range(n), key=lambda i: -pr[i]):
        chosen.append(i)
        total += len(sents[i].split())
        if total >= n_words:
            break
    return " ".join(" ".join(sents[i] for i in sorted(chosen)).split()[:n_words])


def bench_summarize(loaded, data_dir: Path, workdir: Path, quick: bool, n_words: int, split: str,
                    model_weight: float) -> dict:
    from rouge_score import rouge_scorer

    from model_scores import memory_gain

    from infini_cli.tasks.summarize import summarize_passages
    from infini_cli.tasks.summary_scoring import Budget, SummaryPool, select_summary, summary_text

    def with_model(ps, rd) -> list:
        """Summary sentences with the model's memory gain added to the lexical score."""
        pool = SummaryPool()
        for p in ps:
            pool.add(p, rd.index)
        candidates = pool.candidates()
        gains = memory_gain(loaded, rd.state, candidates) if candidates else []
        extra = {p.index: model_weight * g for p, g in zip(candidates, gains)}
        return select_summary(candidates, rd.index, budget, extra=extra)

    rows = [json.loads(line) for line in (data_dir / "squality" / f"{split}.jsonl").read_text().splitlines() if line]
    if quick:
        rows = rows[:8]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    systems = ["lead", "TextRank", "ours"] + (["ours + model"] if model_weight else [])
    totals = {s: Counter() for s in systems}
    t0 = time.perf_counter()
    budget = Budget(words=n_words)
    for k, r in enumerate(rows):
        doc = r["document"]
        refs = [x["response_text"] for x in r["questions"][0]["responses"]]
        rd, ps = read_text(loaded, doc, workdir, "squality-story.txt")
        outs = {"lead": " ".join(doc.split()[:n_words]), "TextRank": textrank([p.text for p in ps], n_words),
                "ours": summary_text(summarize_passages(ps, rd.index, budget), budget)}
        if model_weight:
            outs["ours + model"] = summary_text(with_model(ps, rd), budget)
        for s, text in outs.items():
            text = text.replace(" …", "")
            assert len(text.split()) <= n_words
            sc = scorer.score_multi(refs, text)
            for m, v in sc.items():
                totals[s][m] += v.fmeasure
        log(f"summarize: story {k + 1}/{len(rows)}")
    n = len(rows)
    return {"split": split, "stories": n, "words": n_words, "seconds": round(time.perf_counter() - t0, 1),
            "rows": {s: {m: round(100 * totals[s][m] / n, 2) for m in ("rouge1", "rouge2", "rougeL")} for s in systems}}


# ----------------------------------------------------------------------------- long (a novel + a fact)

FACTS = [
    ("The brass key to the Halvorsen vault was hidden by Captain Ollendorf beneath the ninth stair of the lighthouse.",
     ["Where did Captain Ollendorf hide the brass key to the Halvorsen vault?",
      "Where was the key to the vault hidden?"],
     "ninth stair"),
    ("Professor Quillane measured the comet Vexa at exactly 4,218 miles across on the night of the storm.",
     ["How wide did Professor Quillane measure the comet Vexa?", "How many miles across was the comet?"],
     "4,218"),
    ("The secret treaty of Marrowgate was signed by Duchess Ilvane Tesserow in the winter of 1787.",
     ["Who signed the secret treaty of Marrowgate?", "Who signed the treaty?"],
     "Tesserow"),
]


def insert_fact(text: str, fact: str, depth: float) -> str:
    """Insert the fact as its own paragraph at the blank line nearest the given depth."""
    at = int(len(text) * depth)
    cut = text.find("\n\n", at)
    cut = len(text) if cut < 0 else cut
    return text[:cut] + "\n\n" + fact + text[cut:]


def bench_long(loaded, data_dir: Path, workdir: Path, quick: bool, novel: str) -> dict:
    from infini_cli.readers import open_document
    from infini_cli.tasks.ask import ask

    text = (data_dir / "books" / "valid" / novel).read_text(encoding="utf-8")
    if quick:
        text = text[: len(text) // 8]
    cache_root = workdir / "long-cache"
    trials = []
    facts = FACTS[:1] if quick else FACTS
    for fi, (fact, questions, needle) in enumerate(facts):
        for depth in (0.1, 0.5, 0.9):
            p = workdir / f"long-{fi}-{int(depth * 100)}.txt"
            p.write_text(insert_fact(text, fact, depth), encoding="utf-8")
            for qi, q in enumerate(questions):
                t0 = time.perf_counter()
                res = ask(loaded, open_document(p), q, top_k=3, quiet=True, cache_root=cache_root)
                wall = time.perf_counter() - t0
                ranks = [i for i, e in enumerate(res.evidence) if needle in e.text]
                trials.append({"fact": fi, "depth": depth, "question": q, "paraphrase": qi == 1,
                               "top1": bool(ranks and ranks[0] == 0), "top3": bool(ranks), "cached": res.facts["cached"],
                               "seconds": round(wall, 3), "tokens": res.facts["tokens"]})
                log(f"long: fact {fi} depth {depth:.0%} q{qi} top3={bool(ranks)} cached={res.facts['cached']} {wall:.1f}s")
    tokens = trials[0]["tokens"] if trials else 0

    def share(rows, key):
        return round(sum(r[key] for r in rows) / len(rows), 3) if rows else None

    named = [t for t in trials if not t["paraphrase"]]
    para = [t for t in trials if t["paraphrase"]]
    first = [t["seconds"] for t in trials if not t["cached"]]
    second = [t["seconds"] for t in trials if t["cached"]]
    return {"novel": novel, "tokens": tokens, "trials": trials,
            "top3_named": share(named, "top3"), "top1_named": share(named, "top1"),
            "top3_paraphrase": share(para, "top3"), "top1_paraphrase": share(para, "top1"),
            "first_question_seconds": round(sum(first) / len(first), 2) if first else None,
            "cached_question_seconds": round(sum(second) / len(second), 3) if second else None}


# ----------------------------------------------------------------------------- cache timing (1M tokens)

def bench_cache(model_path: Path, data_dir: Path, workdir: Path, quick: bool, threads: Optional[int],
                loaded) -> dict:
    target = 100_000 if quick else 1_000_000
    doc = workdir / f"joined-{target}.txt"
    if not doc.exists():
        parts, n = [], 0
        tok = loaded.tokenizer
        for f in sorted((data_dir / "books" / "valid").glob("*.txt")):
            t = f.read_text(encoding="utf-8")
            parts.append(t)
            n += len(tok.encode(t))
            if n >= target:
                break
        doc.write_text("\n\n".join(parts), encoding="utf-8")
    env = {**os.environ, "INFINI_CACHE_DIR": str(workdir / "cache-timing")}
    subprocess.run([sys.executable, "-m", "infini_cli.cli", "cache", "clear"], env=env, cwd=ROOT,
                   capture_output=True, check=True)
    runs = []
    for q in ("Who is Tembarom?", "What did Lord Chiltern say to Phineas?"):
        cmd = [sys.executable, "-m", "infini_cli.cli", "ask", str(doc), q, "--json", "--quiet",
               "--model", str(model_path)]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"cache timing failed: {r.stderr.strip()}")
        data = json.loads(r.stdout)
        runs.append({"question": q, "cached": data["cached"], "wall_seconds": round(wall, 2),
                     "seconds": data["seconds"], "tokens": data["tokens"]})
        log(f"cache: {q!r} cached={data['cached']} {wall:.1f}s wall")
    size = sum(f.stat().st_size for f in (workdir / "cache-timing").rglob("*") if f.is_file())
    return {"document_tokens": runs[0]["tokens"], "runs": runs, "cache_entry_bytes": size}


# ----------------------------------------------------------------------------- report

def print_report(res: dict) -> None:
    if "ask" in res:
        a = res["ask"]
        print(f"\nask: SQuAD v1.1 dev, {a['articles']} articles as documents, {a['questions']} questions "
              f"(gold answer in the evidence)")
        print(f"{'system':48s} {'top-1':>7s} {'top-3':>7s}")
        for k, v in a["rows"].items():
            print(f"{k:48s} {v['top1']:7.1%} {v['top3']:7.1%}")
        h = a.get("held_out")
        if h:
            print(f"  articles not used to choose the model weight ({h['questions']} questions): ours "
                  f"{h['ours']['top1']:.1%} / {h['ours']['top3']:.1%}, + model {h['model']['top1']:.1%} / "
                  f"{h['model']['top3']:.1%}")
    if "summarize" in res:
        s = res["summarize"]
        print(f"\nsummarize: SQuALITY {s['split']}, {s['stories']} stories, {s['words']} words, "
              "ROUGE F1 (best of 4 refs)")
        print(f"{'system':48s} {'R-1':>7s} {'R-2':>7s} {'R-L':>7s}")
        for k, v in s["rows"].items():
            print(f"{k:48s} {v['rouge1']:7.2f} {v['rouge2']:7.2f} {v['rougeL']:7.2f}")
    if "long" in res:
        lg = res["long"]
        print(f"\nlong: {lg['novel']} ({lg['tokens']:,} tokens), a fact inserted at 10/50/90% depth")
        print(f"  fact in top-3 evidence: named question {lg['top3_named']:.0%}, "
              f"paraphrase {lg['top3_paraphrase']:.0%}; "
              f"top-1: {lg['top1_named']:.0%} / {lg['top1_paraphrase']:.0%}")
        print(f"  first question (reads the novel) {lg['first_question_seconds']} s; second (cached) "
              f"{lg['cached_question_seconds']} s")
    if "cache" in res:
        c = res["cache"]
        print(f"\ncache: {c['document_tokens']:,}-token document, cache entry {c['cache_entry_bytes'] / 2**20:.1f} MB")
        for r in c["runs"]:
            print(f"  {'second (cached)' if r['cached'] else 'first (reads)'}: {r['wall_seconds']} s wall "
                  f"({r['seconds']} s in the command)")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="subsets: 3 articles, 8 stories, 1/8 of the novel, a 100K+ token cache test")
    ap.add_argument("--model", type=Path, default=None, help=f"checkpoint (default {DEFAULT_MODEL})")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sections", default="ask,summarize,long,cache")
    ap.add_argument("--split", default="test", help="SQuALITY split for summarize (tune on dev/train only)")
    ap.add_argument("--words", type=int, default=200)
    ap.add_argument("--model-weight", type=float, default=1.0, help="ask: weight of the model rerank row (0: skip)")
    ap.add_argument("--rerank", type=int, default=8, help="ask: candidates the model rescores")
    ap.add_argument("--summary-model-weight", type=float, default=0.0,
                    help="summarize: weight of the model's memory gain for an extra row (0: skip)")
    ap.add_argument("--novel", default="1912_the_lost_world.txt")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/infini-bench-quality"))
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here (nothing is written without it)")
    args = ap.parse_args(argv)

    if not (args.data / "squad").is_dir() and not (args.data / "squality").is_dir():
        print(f"skipped: no evaluation data at {args.data} (expects squad/, squality/, books/valid/)")
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    loaded, model_path, note = get_model(args.model, args.workdir, args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    import torch

    res: dict[str, Any] = {
        "command": "python benchmarks/bench_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": str(model_path), "note": note,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "quick": args.quick}
    if "ask" in sections and (args.data / "squad").is_dir():
        res["ask"] = bench_ask(loaded, args.data, args.workdir, args.quick, args.model_weight, args.rerank)
    if "summarize" in sections and (args.data / "squality").is_dir():
        res["summarize"] = bench_summarize(loaded, args.data, args.workdir, args.quick, args.words, args.split,
                                           args.summary_model_weight)
    if "long" in sections and (args.data / "books" / "valid" / args.novel).exists():
        res["long"] = bench_long(loaded, args.data, args.workdir, args.quick, args.novel)
    if "cache" in sections and (args.data / "books" / "valid").is_dir():
        res["cache"] = bench_cache(model_path, args.data, args.workdir, args.quick, args.threads, loaded)
    print_report(res)
    if note:
        print(f"\nnote: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
