"""The writer (`infini pull smollm2`) against the extractive answers, side by side in one run.

    python benchmarks/bench_writer.py --sections ask --articles 10 --questions 20     # SQuAD-long
    python benchmarks/bench_writer.py --sections summarize --stories 20              # SQuALITY
    python benchmarks/bench_writer.py --sections ask-stories --stories 20            # SQuALITY questions
    python benchmarks/bench_writer.py --sections speed --threads 1,2                 # tokens/s

Sections:
- ask: SQuAD v1.1 dev articles, each joined into one document and read once by the reader
  (the bundled model, as `infini ask` does); the first --questions questions of each of
  --articles articles spread evenly over the dev set (a fixed, stated sample). For each:
  the writer's answer from the best evidence and its second hop (the product's path: tasks.ask.write_answer)
  and the extractive answer (the top evidence sentence); a question ask reads as open gets ask's
  long answer in both (tasks.open_questions); scored with SQuAD's exact match
  and token F1 (official normalisation; best over the gold answers). Absent answers: the
  same questions asked of the next article, where the answer is not: how often ask says the
  document does not say (and how often it says so when the answer is there). Each answer
  also without ask's rule on the question's words (the writer alone). --ask-oracle adds the
  writer alone given the best-ranked sentence that holds a gold answer: the ceiling of a
  perfect ranking for this writer. --article-offset
  moves the sample (the rule and the settings were chosen with offset 3, reported with 0).
- absent-rule: that rule at several thresholds on the same sample, from the reader's
  statistics alone (no writer): absent answers caught, present ones turned away.
- ask-stories: ask on SQuALITY's questions about each story (2-5 of each: "Who is X, and what
  happens to her?", "Describe the setting."), through `infini ask`'s own function: the answer
  long (a focused summary of --answer-words words) and short, written and extractive, ROUGE-1/2/L
  F1 against the four reference answers (best of them) and the share of the answer's words
  neither the story nor the question uses; "auto" is what ask answers by default; a human
  answer against the other three for scale. --stories, --split as summarize.
- summarize: SQuALITY stories (--split, default test), 'What is the plot of the story?'
  references, ROUGE-1/2/L F1 (rouge_score, stemmed, best of the references) at --words words:
  the written summary, the extractive one, TextRank and lead (bench_quality's baselines).
- speed: the writer's ingest (prefill) and decode tokens/s with float32 weights, the int8
  kernel, and int4 where re-quantizing loses nothing (int8 elsewhere), decoding through the
  eager decoder and, where `infini pull` built it, the compiled step (the product's default
  then), at each --threads; median of --reps; peak RSS.
- summarize-speed: `infini summarize` on the 100-page PDF (--words words, the document cached
  first), as a user runs it, with the compiled decoding step and with it off
  ($INFINI_COMPILED_DECODE=0), alternating, --reps times each at each --threads: the
  command's seconds, the summary's words, whether the two summaries are the same.
- cuda: the writer on a CUDA GPU (bfloat16 weights, float32 memory): prefill and decode
  tokens/s and prefill's share of the GPU's bf16 matmul rate at the writer's shapes
  (benchmarks/gpu_check.sh runs it with the other CUDA checks).
- llamacpp: llama.cpp (llama-cpp-python, optional) on the GGUF given by --gguf, the same
  prompt and decode lengths and threads as speed; run `--sections speed,llamacpp` for the two
  side by side in one run.
- ttft: `infini ask` as a user runs it on a 100-page PDF (a books/valid novel typeset by
  fpdf2): seconds from the command's start to the first answer character on stdout, with the
  document read now (a fresh cache) and from the cache, at each --threads; the command's peak
  RSS.

Data: ../shared/data (or --data); skips cleanly when it or the writer is absent. Results go
to --out (JSON) only when given; a table is printed either way.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_DATA = ROOT.parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU's model name (speed figures differ from machine to machine)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- SQuAD scoring (official)

def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def best(metric, prediction: str, golds: list[str]) -> float:
    return max(metric(prediction, g) for g in golds)


# ----------------------------------------------------------------------------- ask

ORACLE = "written from the answer's sentence (oracle)"

RANKING_DEPTHS = (1, 2, 4, 8, 16)


def ranking_of(rd, ps, q):
    """The evidence ranking `infini ask` makes, best first."""
    from infini_cli.tasks.ask_scoring import AskPool, AskWeights, QuestionScorer

    pool = AskPool(QuestionScorer(q, AskWeights()))
    for p in ps:
        pool.add(p, rd.index.stats)
    return pool.ranked(rd.index.stats)


def evidence_of(rd, ps, q, ranking=None):
    """What `infini ask` gives the writer (the best evidence, and its second hop where the
    question wants one) and whether the writer copies its answer from it (tasks.ask.writer_reading),
    from `ranking`, ranking_of's, where the caller has it."""
    from infini_cli.tasks.ask import RANKED_DEPTH, writer_reading

    ranked = (ranking if ranking is not None else ranking_of(rd, ps, q))[:RANKED_DEPTH]
    return writer_reading(q, ranked, lambda: ps, rd.index.stats)[:2]


def squad_sample(reader, data_dir: Path, workdir: Path, n_articles: int, n_questions: int, offset: int):
    """SQuAD-long: (article number, its first questions, the next article of the sample) for
    evenly spread articles, and doc(article) -> (read, passages), each article read once."""
    from bench_quality import read_text

    articles = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text())["data"]
    step = max(1, len(articles) // n_articles)
    picked = list(range(offset, len(articles), step))[:n_articles]
    docs: dict = {}

    def doc(ai):
        if ai not in docs:
            text = "\n\n".join(p["context"] for p in articles[ai]["paragraphs"])
            docs[ai] = read_text(reader, text, workdir, f"squad-{ai}.txt")
        return docs[ai]

    sample = [(ai, [qa for p in articles[ai]["paragraphs"] for qa in p["qas"]][:n_questions],
               picked[(k + 1) % len(picked)]) for k, ai in enumerate(picked)]
    return sample, doc


def holds(ev, golds: list[str]) -> bool:
    return any(normalize_answer(g) in normalize_answer(" ".join(p.text for p in ev)) for g in golds)


def bench_absent_rule(reader, data_dir: Path, workdir: Path, n_articles: int, n_questions: int, offset: int = 0,
                      thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)) -> dict:
    """ask's rule on the question's words (ask_scoring.question_coverage) at several thresholds,
    from the reader's statistics alone: the share of absent answers it catches (the question
    asked of the next article, whose evidence does not hold the answer) and of present ones it
    turns away."""
    from infini_cli.tasks.ask_scoring import MIN_QUESTION_COVERAGE, question_coverage

    sample, doc = squad_sample(reader, data_dir, workdir, n_articles, n_questions, offset)
    present: list[float] = []
    absent: list[float] = []
    for ai, qas, other in sample:
        for qa in qas:
            q, golds = qa["question"], [a["text"] for a in qa["answers"]]
            present.append(question_coverage(q, doc(ai)[0].index.stats)[0])
            ord_, ops = doc(other)
            if not holds(evidence_of(ord_, ops, q)[0], golds):
                absent.append(question_coverage(q, ord_.index.stats)[0])
    rows = [{"threshold": t, "absent_caught": round(sum(c < t for c in absent) / len(absent), 4),
             "present_turned_away": round(sum(c < t for c in present) / len(present), 4)} for t in thresholds]
    return {"articles": [ai for ai, _, _ in sample], "questions": len(present), "absent_questions": len(absent),
            "shipped_threshold": MIN_QUESTION_COVERAGE, "rows": rows}


def oracle_evidence(rd, ps, q, golds: list[str]):
    """The best-ranked sentence of the document that holds a gold answer ([] where none does,
    the answer split between sentences): what the writer would read with a perfect ranking."""
    from infini_cli.tasks.ask_scoring import AskPool, AskWeights, QuestionScorer

    pool = AskPool(QuestionScorer(q, AskWeights()), size=len(ps) + 1)
    for p in ps:
        pool.add(p, rd.index.stats)
    ranked = pool.ranked(rd.index.stats)  # then a sentence sharing no word with the question
    return [p for p in ranked + list(ps) if holds([p], golds)][:1]


def open_answers_of(rd, ps, q, writer) -> dict[str, str]:
    """`infini ask`'s long answer to an open question (tasks.open_questions), from a document's
    passages and final statistics: "written" by the writer, "extractive" (the focused sentences)."""
    from infini_cli.tasks.ask import rank_passages
    from infini_cli.tasks.open_questions import FOCUS_POOL, answer_open, subject_question
    from infini_cli.tasks.summary_scoring import SummaryPool

    pool = SummaryPool()
    for p in ps:
        pool.add(p, rd.index)
    ranked = rank_passages(subject_question(q), ps, rd.index, FOCUS_POOL)
    return {system: answer_open(q, pool.candidates(), ranked, rd.index, writer=w)[0]
            for system, w in (("written", writer), ("extractive", None))}


def bench_ask(reader, writer, data_dir: Path, workdir: Path, n_articles: int, n_questions: int,
              offset: int = 0, prompt: Optional[str] = None, shots: Optional[int] = None, oracle: bool = False) -> dict:
    from infini_cli.tasks.ask import ASK_SHOTS, write_answer, writer_plan
    from infini_cli.tasks.ask_scoring import unknown_names, unmentioned_words
    from infini_cli.tasks.open_questions import is_open_question
    from infini_cli.tasks.writer import NOT_IN_DOCUMENT

    sample, doc = squad_sample(reader, data_dir, workdir, n_articles, n_questions, offset)
    tot = Counter()
    examples = []
    t0 = time.perf_counter()
    said_absent = lambda text: NOT_IN_DOCUMENT.lower().rstrip(".") in text.lower()  # noqa: E731
    systems = ("written", "written, without the absent rule", "extractive", "extractive, without the absent rule")
    if oracle:
        systems += (ORACLE,)

    def answers_of(rd, ps, plan, q) -> dict[str, str]:
        """Every system's answer: as `infini ask` answers with the writer ("written") and without
        it ("extractive", the top evidence sentence; for an open question both are ask's long
        answer, open_answers_of), "does not say" where the document lacks the question's words
        (ask_scoring.unmentioned_words; of an open question, a name it never uses:
        ask_scoring.unknown_names); and each without that rule. plan: evidence_of's."""
        ev, copy = plan
        shown = ASK_SHOTS[:shots] if shots is not None else ASK_SHOTS
        if is_open_question(q):
            alone = open_answers_of(rd, ps, q, writer)
            absent = unknown_names(q, rd.index.stats) is not None
        else:
            alone = {"written": write_answer(writer, ev, q, prompt=prompt, shots=shown, copy=copy) if ev
                     else NOT_IN_DOCUMENT,
                     "extractive": ev[0].text if ev else ""}
            absent = not ev or unmentioned_words(q, rd.index.stats) is not None
        return {**{k: NOT_IN_DOCUMENT if absent else v for k, v in alone.items()},
                **{f"{k}, without the absent rule": v for k, v in alone.items()}}

    for k, (ai, qas, other) in enumerate(sample):
        rd, ps = doc(ai)
        for qa in qas:
            q, golds = qa["question"], [a["text"] for a in qa["answers"]]
            ranking = ranking_of(rd, ps, q)
            ev, copy = evidence_of(rd, ps, q, ranking)
            here = answers_of(rd, ps, (ev, copy), q)
            if oracle:  # the ceiling: the writer alone, given the sentence that holds the answer
                best_ev = oracle_evidence(rd, ps, q, golds)
                tot["oracle_found"] += bool(best_ev)
                oracle_ev, oracle_copy = writer_plan(q, best_ev, [])
                here[ORACLE] = write_answer(writer, oracle_ev, q, prompt=prompt, copy=oracle_copy) if best_ev else ""
            tot["n"] += 1
            f1 = {system: best(f1_score, answer, golds) for system, answer in here.items()}
            for system, answer in here.items():
                tot[f"{system} em"] += best(exact_match, answer, golds)
                tot[f"{system} f1"] += f1[system]
                tot[f"{system} said absent when present"] += said_absent(answer)
            tot["evidence_holds"] += holds(ev, golds)
            for depth in RANKING_DEPTHS:
                tot[f"ranking holds at {depth}"] += holds(ranking[:depth], golds)
            # the same question of another article: the answer should be absent there
            ord_, ops = doc(other)
            oplan = evidence_of(ord_, ops, q)
            oev = oplan[0]
            there = answers_of(ord_, ops, oplan, q)
            if not holds(oev, golds):
                tot["absent_n"] += 1
                for system, answer in there.items():
                    tot[f"{system} said absent when absent"] += said_absent(answer)
            examples.append({"article": ai, "question": q, "gold": golds[0], "copied": copy, "sentences_read": len(ev),
                             "written": here["written"], "extractive": here["extractive"],
                             "written_f1": round(f1["written"], 4),
                             "other_document": there["written"]})
        log(f"ask: article {k + 1}/{len(sample)}, {tot['n']} questions, written F1 "
            f"{100 * tot['written f1'] / tot['n']:.1f} vs extractive {100 * tot['extractive f1'] / tot['n']:.1f}")
    n, absent_n = tot["n"], tot["absent_n"]
    return {"articles": [ai for ai, _, _ in sample], "questions": n, "seconds": round(time.perf_counter() - t0, 1),
            "rows": {system: {"em": round(100 * tot[f"{system} em"] / n, 2), "f1": round(100 * tot[f"{system} f1"] / n, 2),
                              "says_absent_when_present": round(tot[f"{system} said absent when present"] / n, 4),
                              "says_absent_when_absent": round(tot[f"{system} said absent when absent"] / absent_n, 4)
                              if absent_n and system != ORACLE else None}
                     for system in systems},
            "evidence_holds_answer": round(tot["evidence_holds"] / n, 4),
            "ranking_holds_answer": {str(d): round(tot[f"ranking holds at {d}"] / n, 4) for d in RANKING_DEPTHS},
            **({"oracle_sentence_found": round(tot["oracle_found"] / n, 4)} if oracle else {}),
            "absent_questions": absent_n,
            "examples": examples}


# ----------------------------------------------------------------------------- summarize

def bench_summarize(reader, writer, data_dir: Path, workdir: Path, n_stories: int, n_words: int, split: str) -> dict:
    from bench_quality import read_text, textrank
    from rouge_score import rouge_scorer

    from infini_cli.tasks.summary_scoring import Budget, summary_text
    from infini_cli.tasks.summarize import MATERIAL, MIN_MATERIAL_WORDS, summarize_passages, write_summary

    rows = [json.loads(line) for line in (data_dir / "squality" / f"{split}.jsonl").read_text().splitlines() if line]
    rows = rows[:n_stories]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    systems = ["written", "extractive", "TextRank", "lead"]
    totals = {s: Counter() for s in systems}
    budget = Budget(words=n_words)
    material = Budget(words=max(MIN_MATERIAL_WORDS, MATERIAL * n_words))
    t0 = time.perf_counter()
    example = None
    per_story: list[dict[str, float]] = []  # ROUGE-L of each story, by system
    for k, r in enumerate(rows):
        doc = r["document"]
        refs = [x["response_text"] for x in r["questions"][0]["responses"]]
        rd, ps = read_text(reader, doc, workdir, "squality-story.txt")
        written, _ = write_summary(writer, summarize_passages(ps, rd.index, material), budget)
        outs = {"written": written,
                "extractive": summary_text(summarize_passages(ps, rd.index, budget), budget),
                "TextRank": textrank([p.text for p in ps], n_words), "lead": " ".join(doc.split()[:n_words])}
        story_rouge_l = {}
        for s, text in outs.items():
            sc = scorer.score_multi(refs, text.replace(" …", ""))
            for m, v in sc.items():
                totals[s][m] += v.fmeasure
            totals[s]["words"] += len(text.split())
            story_rouge_l[s] = round(100 * sc["rougeL"].fmeasure, 2)
        per_story.append(story_rouge_l)
        example = example or {"story": r.get("metadata", {}).get("passage_id", k), "written": written}
        log(f"summarize: story {k + 1}/{len(rows)}")
    n = len(rows)
    return {"split": split, "stories": n, "words": n_words, "seconds": round(time.perf_counter() - t0, 1),
            "rows": {s: {**{m: round(100 * totals[s][m] / n, 2) for m in ("rouge1", "rouge2", "rougeL")},
                         "mean_words": round(totals[s]["words"] / n, 1)} for s in systems},
            "stories_written_above_extractive": sum(r["written"] > r["extractive"] for r in per_story),
            "rouge_l_per_story": per_story, "example": example}


HUMAN = "a reference, against the other three"


def unsupported_share(answer: str, known_terms: set[str]) -> float:
    """The share of an answer's content terms (stemmed) that neither its document nor the
    question uses (known_terms): a measure of what a writer invents ("a futuristic city",
    "London"); 0 for an empty answer and for "The document does not say."."""
    from infini_cli.tasks.lexical import terms
    from infini_cli.tasks.writer import NOT_IN_DOCUMENT

    ts = [] if answer.strip() == NOT_IN_DOCUMENT else terms(answer)
    return sum(t not in known_terms for t in ts) / len(ts) if ts else 0.0


def bench_ask_stories(reader, writer, data_dir: Path, workdir: Path, n_stories: int, split: str,
                      n_words: int) -> dict:
    """ask on SQuALITY's questions about a story (questions 2-5: "Who is X, and what happens to
    her?", "Describe the setting."), each answered long (a focused summary of n_words words) and
    short (a phrase or the best sentence), with the writer and without, through `infini ask`'s
    own function (the story read once, then from the cache): ROUGE-1/2/L F1 against the four
    reference answers (best of them) and the share of the answer's content words neither the
    story nor the question uses (unsupported_share); every answer is kept in the results. "auto"
    is what ask answers by default (long for an open question,
    tasks.open_questions.is_open_question). For scale, the same measures of each human
    reference against the other three."""
    from rouge_score import rouge_scorer

    from infini_cli.readers import open_document
    from infini_cli.tasks.ask import ask
    from infini_cli.tasks.lexical import terms
    from infini_cli.tasks.open_questions import is_open_question

    rows = [json.loads(line) for line in (data_dir / "squality" / f"{split}.jsonl").read_text().splitlines() if line]
    rows = rows[:n_stories]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    answerers = {"written, long": (writer, "long"), "written, short": (writer, "short"),
                 "extractive, long": (None, "long"), "extractive, short": (None, "short")}
    systems = ["written, auto (as ask answers)", *answerers, "extractive, auto", HUMAN]
    totals = {s: Counter() for s in systems}
    n = n_open = 0
    answers: list[dict] = []
    t0 = time.perf_counter()
    for k, r in enumerate(rows):
        path = workdir / f"squality-{split}-{k}.txt"
        path.write_text(r["document"], encoding="utf-8")
        story_terms = set(terms(r["document"]))
        for qd in r["questions"][1:]:
            q, refs = qd["question_text"], [x["response_text"] for x in qd["responses"]]
            outs = {name: ask(reader, open_document(path), q, quiet=True, cache_root=workdir / "cache", writer=w,
                              answer_kind=kind, n_words=n_words).answer
                    for name, (w, kind) in answerers.items()}
            is_open = is_open_question(q)
            outs["written, auto (as ask answers)"] = outs["written, long" if is_open else "written, short"]
            outs["extractive, auto"] = outs["extractive, long" if is_open else "extractive, short"]
            for s_, text in outs.items():
                sc = scorer.score_multi(refs, text.replace(" …", ""))
                for m, v in sc.items():
                    totals[s_][m] += v.fmeasure
                totals[s_]["words"] += len(text.split())
                totals[s_]["unsupported"] += unsupported_share(text, story_terms | set(terms(q)))
            n += 1
            n_open += is_open
            answers.append({"story": k, "question": q, "open": is_open, **outs})
            # people, for scale: each reference against the other three, the same measures
            for i, ref in enumerate(refs):
                sc = scorer.score_multi(refs[:i] + refs[i + 1:], ref)
                for m, v in sc.items():
                    totals[HUMAN][m] += v.fmeasure / len(refs)
                totals[HUMAN]["words"] += len(ref.split()) / len(refs)
                totals[HUMAN]["unsupported"] += unsupported_share(ref, story_terms | set(terms(q))) / len(refs)
        log(f"ask-stories: story {k + 1}/{len(rows)}, ROUGE-L as ask answers "
            f"{100 * totals[systems[0]]['rougeL'] / n:.2f}")
    return {"split": split, "stories": len(rows), "questions": n, "open_questions": n_open, "words": n_words,
            "seconds": round(time.perf_counter() - t0, 1),
            "rows": {s_: {**{m: round(100 * totals[s_][m] / n, 2) for m in ("rouge1", "rouge2", "rougeL")},
                          "mean_words": round(totals[s_]["words"] / n, 1),
                          "unsupported_words": round(totals[s_]["unsupported"] / n, 4)} for s_ in systems},
            "answers": answers}


# ----------------------------------------------------------------------------- time to the first token

def make_pdf(data_dir: Path, workdir: Path, pages: int = 100) -> Path:
    """A books/valid novel typeset into `pages` pages (the same file on every run)."""
    from fpdf import FPDF

    path = workdir / f"novel-{pages}p.pdf"
    if path.exists():
        return path
    text = (data_dir / "books" / "valid" / "1912_the_lost_world.txt").read_text(encoding="utf-8")
    text = text.encode("latin-1", "replace").decode("latin-1")  # the core fonts are latin-1
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    lines = iter(text.splitlines())
    while pdf.page_no() <= pages:
        line = next(lines, None)
        if line is None:
            break
        pdf.multi_cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def first_token_seconds(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(seconds to the first answer character on stdout, seconds in all, the child's peak RSS MB)."""
    import os
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    first = None
    assert proc.stdout is not None
    while True:
        ch = proc.stdout.read(1)
        if not ch:
            break
        if first is None and not ch.isspace():
            first = time.perf_counter() - t0
    _, _, usage = os.wait4(proc.pid, 0)  # this command's own peak RSS
    proc.returncode = 0
    total = time.perf_counter() - t0
    peak = usage.ru_maxrss // 1024
    return (first if first is not None else float("nan")), total, peak


def bench_ttft(data_dir: Path, workdir: Path, threads: list[int], writer: str) -> dict:
    import shutil

    pdf = make_pdf(data_dir, workdir)
    question = "Who is Lord John Roxton?"
    rows = []
    for n in threads:
        cache = workdir / f"ttft-cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [sys.executable, "-m", "infini_cli", "ask", str(pdf), question, "--model", writer, "--threads", str(n)]
        # the product as installed (the compiled decoding step where `infini pull` built it),
        # then the cached document once more with decoding kept eager
        for state, decoding in (("read now", "default"), ("cached", "default"), ("cached", "eager")):
            env = {"INFINI_CACHE_DIR": str(cache), **({"INFINI_COMPILED_DECODE": "0"} if decoding == "eager" else {})}
            first, total, peak = first_token_seconds(cmd, env)
            rows.append({"threads": n, "document": state, "decoding": decoding, "first_token_s": round(first, 2),
                         "total_s": round(total, 2), "peak_rss_mb": peak})
            log(f"ttft: {n} thread(s), {state}, decoding {decoding}: first token {first:.2f} s, all {total:.2f} s")
    return {"pdf": str(pdf), "question": question, "rows": rows}


def bench_summarize_speed(data_dir: Path, workdir: Path, threads: list[int], writer: str, words: int,
                          reps: int) -> dict:
    import os
    import subprocess

    pdf = make_pdf(data_dir, workdir)
    cache = workdir / "summarize-speed-cache"
    base = {**os.environ, "INFINI_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-m", "infini_cli", "read", str(pdf), "--quiet"], env=base, check=True,
                   capture_output=True)  # read once: every timed run starts from the cache
    rows = []
    for n in threads:
        cmd = [sys.executable, "-m", "infini_cli", "summarize", str(pdf), "--model", writer, "--words", str(words),
               "--threads", str(n), "--json"]
        times: dict[str, list[float]] = {"compiled": [], "eager": []}
        summaries: dict[str, str] = {}
        for _ in range(reps):
            for decoding in times:
                env = {**base, "INFINI_COMPILED_DECODE": "1" if decoding == "compiled" else "0"}
                t0 = time.perf_counter()
                done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                times[decoding].append(time.perf_counter() - t0)
                data = json.loads(done.stdout)
                assert data["decoding"] == decoding, data["decoding"]
                summaries[decoding] = data["summary"]
        row = {"threads": n, **{f"{k}_s": round(statistics.median(v), 2) for k, v in times.items()},
               **{f"{k}_runs_s": [round(t, 2) for t in v] for k, v in times.items()},
               "words": len(summaries["compiled"].split()),
               "same_summary": summaries["compiled"] == summaries["eager"]}
        log(f"summarize-speed: {row}")
        rows.append(row)
    return {"pdf": str(pdf), "words": words, "reps": reps, "rows": rows}


# ----------------------------------------------------------------------------- speed

SPEED_TEXT = "The committee met in the spring and decided to build a bridge. " * 80


def time_prefill_decode(loaded, ids: list[int], decode_tokens: int, reps: int, empty, sync=lambda: None,
                        compiled=None) -> tuple[list[float], list[float]]:
    """Seconds of each of `reps` prefills of ids (from empty()) and of the decodes of
    decode_tokens greedy tokens after them through the product's decoder (with `compiled`,
    the decoding step compiled ahead of time, as stream.generate picks it); sync waits for a
    device (CUDA) before each clock reading."""
    from infini_cli.decode import Decoder
    from infini_cli.decode_compiled import CompiledDecoder
    from infini_cli.stream import feed

    feed(loaded.model, empty(), ids[:32], logits="last")  # warm-up
    prefills, decodes = [], []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        logits, state = feed(loaded.model, empty(), ids, logits="last")
        sync()
        prefills.append(time.perf_counter() - t)
        tok = logits[0, -1].argmax().view(1)
        t = time.perf_counter()
        decoder = (CompiledDecoder(compiled, loaded.model, state, reserve=decode_tokens) if compiled is not None
                   else Decoder(loaded.model, state, reserve=decode_tokens))
        for _ in range(decode_tokens):
            tok = decoder.step(tok).argmax(-1)
        sync()
        decodes.append(time.perf_counter() - t)
    return prefills, decodes


def bench_speed(writer_path: Path, threads: list[int], prompt_tokens: int = 512, decode_tokens: int = 64,
                reps: int = 3) -> dict:
    """Prefill and decode tokens/s of the writer with each kernel choice: float32 weights, every
    layer in int8, and int4 where re-quantizing loses nothing, int8 elsewhere (what the product
    loads), decoding eagerly (decode.Decoder) and, where `infini pull` has built it, through
    the step compiled ahead of time (the product's default then); the median of `reps` runs."""
    import torch

    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.decode_compiled import load_compiled
    from infini_cli.memory import StreamState

    names = {"float": "float32", "int8": "int8 kernel", "int4": "int4+int8 kernels",
             "compiled": "int4+int8 kernels, compiled step (default)"}
    out = []
    for kernels in ("float", "int8", "int4", "compiled"):
        loaded = load_checkpoint(writer_path, kernels="int4" if kernels == "compiled" else kernels)
        compiled = load_compiled(loaded.model) if kernels == "compiled" else None
        if kernels == "compiled" and compiled is None:
            log("speed: no compiled decoding step for this writer here (infini pull builds it): row skipped")
            continue
        ids = loaded.tokenizer.encode(SPEED_TEXT)[:prompt_tokens]
        for n in threads:
            torch.set_num_threads(n)
            prefills, decodes = time_prefill_decode(loaded, ids, decode_tokens, reps,
                                                    lambda: StreamState.empty(loaded.config), compiled=compiled)
            row = {"weights": names[kernels], "threads": n,
                   "prefill_tokens_per_s": round(len(ids) / statistics.median(prefills), 1),
                   "decode_tokens_per_s": round(decode_tokens / statistics.median(decodes), 1),
                   "decode_runs_tokens_per_s": [round(decode_tokens / d, 1) for d in decodes]}
            out.append(row)
            log(f"speed: {row}")
    return {"prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "reps": reps, "rows": out,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def bench_speed_cuda(writer_path: Path, prompt_tokens: int = 512, decode_tokens: int = 64, reps: int = 3,
                     device: str = "cuda") -> dict:
    """The writer on CUDA as the product loads it there (bfloat16 weights, float32 memory):
    prefill and decode tokens/s (median of `reps`), and prefill's share of the GPU's bf16
    matmul rate measured at the writer's own linear shapes (engine_bench.matmul_rate)."""
    import torch

    from engine_bench import flops_per_token, matmul_rate

    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.memory import StreamState

    dev = torch.device(device)  # another device only to try this function where no GPU is
    loaded = load_checkpoint(writer_path, dev, dtype=torch.bfloat16)  # CUDA's default dtype
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ids = loaded.tokenizer.encode(SPEED_TEXT)[:prompt_tokens]
    prefills, decodes = time_prefill_decode(
        loaded, ids, decode_tokens, reps,
        lambda: StreamState.empty(loaded.config, device=dev, dtype=torch.bfloat16), sync)
    prefill_tps = len(ids) / statistics.median(prefills)
    rate = matmul_rate(loaded.config, len(ids), dev, torch.bfloat16)["gflops"]
    flops = flops_per_token(loaded.config)["total"]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    row = {"weights": f"bfloat16 ({dev.type})", "device": name,
           "prefill_tokens_per_s": round(prefill_tps, 1),
           "decode_tokens_per_s": round(decode_tokens / statistics.median(decodes), 1),
           "bf16_matmul_gflops_at_writer_shapes": round(rate, 1),
           "prefill_share_of_matmul_rate": round(flops * prefill_tps / 1e9 / rate, 4)}
    log(f"cuda: {row}")
    peak = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None
    return {"prompt_tokens": len(ids), "decode_tokens": decode_tokens, "reps": reps, "rows": [row],
            "peak_gpu_memory_mb": peak}


def bench_llamacpp(gguf: Path, threads: list[int], prompt_tokens: int = 512, decode_tokens: int = 64,
                   reps: int = 3) -> dict:
    """llama.cpp (llama-cpp-python, an optional benchmark dependency) on the same GGUF, the same
    prompt length and decode length, one token at a time, at each thread count: the
    side-by-side rows for the speed section (run both in one command)."""
    from llama_cpp import Llama

    out = []
    for n in threads:
        llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=n, n_threads_batch=n, n_batch=512,
                    verbose=False)
        ids = llm.tokenize(SPEED_TEXT.encode("utf-8"), add_bos=False)[:prompt_tokens]
        llm.eval(ids[:32])  # warm-up
        prefills, decodes = [], []
        for _ in range(reps):
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            prefills.append(time.perf_counter() - t)
            t = time.perf_counter()
            tok = ids[-1]
            for _ in range(decode_tokens):
                llm.eval([tok])  # one token at a time, as decoding; which token does not change the work
            decodes.append(time.perf_counter() - t)
        row = {"weights": f"llama.cpp ({gguf.name.split('.')[-2]})", "threads": n,
               "prefill_tokens_per_s": round(len(ids) / statistics.median(prefills), 1),
               "decode_tokens_per_s": round(decode_tokens / statistics.median(decodes), 1),
               "decode_runs_tokens_per_s": [round(decode_tokens / d, 1) for d in decodes]}
        out.append(row)
        log(f"llama.cpp: {row}")
        del llm
    return {"gguf": str(gguf), "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "rows": out}


# ----------------------------------------------------------------------------- main

def print_rouge_rows(rows: dict, first: str, width: int, extra_title: str = "", extra: str = "") -> None:
    """A table of ROUGE-1/2/L and mean words by system, with one more column (a share) if named."""
    print(f"{first:{width}} {'R-1':>6} {'R-2':>6} {'R-L':>6} {'words':>6}" + (f"  {extra_title}" if extra else ""))
    for k, v in rows.items():
        print(f"{k:{width}} {v['rouge1']:6.2f} {v['rouge2']:6.2f} {v['rougeL']:6.2f} {v['mean_words']:6.1f}"
              + (f"  {v[extra]:.1%}" if extra else ""))


def print_report(res: dict) -> None:
    if "ask" in res:
        a = res["ask"]
        print(f"\nask on SQuAD-long: {a['questions']} questions of {len(a['articles'])} articles")
        print(f"{'answer':38} {'EM':>6} {'F1':>6}  says 'does not say': when absent ({a['absent_questions']} q), "
              f"when present")
        for k, v in a["rows"].items():
            when_absent = "-" if v["says_absent_when_absent"] is None else f"{v['says_absent_when_absent']:.1%}"
            print(f"{k:38} {v['em']:6.2f} {v['f1']:6.2f}  {when_absent}  {v['says_absent_when_present']:.1%}")
        print(f"evidence holds the answer: {a['evidence_holds_answer']:.1%}")
        if "ranking_holds_answer" in a:
            print("the best N evidence sentences hold it: " + ", ".join(
                f"{d}: {v:.1%}" for d, v in a["ranking_holds_answer"].items()))
        if "oracle_sentence_found" in a:
            print(f"oracle: a sentence of the document holds the answer for {a['oracle_sentence_found']:.1%} "
                  "(the others score 0)")
    if "absent_rule" in res:
        r = res["absent_rule"]
        print(f"\nask's rule on the question's words, articles {r['articles']}: {r['absent_questions']} absent answers, "
              f"{r['questions']} present (shipped threshold {r['shipped_threshold']})")
        for row in r["rows"]:
            print(f"coverage < {row['threshold']:.2f}: absent caught {row['absent_caught']:.1%}, "
                  f"present turned away {row['present_turned_away']:.1%}")
    if "summarize" in res:
        s = res["summarize"]
        print(f"\nsummarize on SQuALITY {s['split']}: {s['stories']} stories, {s['words']} words")
        print_rouge_rows(s["rows"], "system", 12)
        print(f"ROUGE-L of the written summary above the extractive one's in {s['stories_written_above_extractive']} "
              f"of {s['stories']} stories")
    if "ask_stories" in res:
        s = res["ask_stories"]
        print(f"\nask on SQuALITY {s['split']} questions about the story: {s['questions']} questions of {s['stories']} "
              f"stories ({s['open_questions']} open), long answers {s['words']} words")
        print_rouge_rows(s["rows"], "answer", 32, "words neither story nor question uses", "unsupported_words")
    if "speed" in res:
        print(f"\nwriter speed (prompt {res['speed']['prompt_tokens']} tokens, then {res['speed']['decode_tokens']} decoded)")
        for r in res["speed"]["rows"]:
            print(f"{r['weights']:44} {r['threads']} thr  prefill {r['prefill_tokens_per_s']:8.1f} tok/s  "
                  f"decode {r['decode_tokens_per_s']:6.1f} tok/s")
    if "cuda" in res:
        for r in res["cuda"]["rows"]:
            print(f"\nwriter on {r['device']}: prefill {r['prefill_tokens_per_s']:,.0f} tok/s "
                  f"({r['prefill_share_of_matmul_rate']:.0%} of the bf16 matmul rate), "
                  f"decode {r['decode_tokens_per_s']:.1f} tok/s")
    if "llamacpp" in res:
        print(f"\nllama.cpp on {res['llamacpp']['gguf']}")
        for r in res["llamacpp"]["rows"]:
            print(f"{r['weights']:22} {r['threads']} thr  prefill {r['prefill_tokens_per_s']:8.1f} tok/s  "
                  f"decode {r['decode_tokens_per_s']:6.1f} tok/s")
        for n, ratio in res.get("decode_vs_llamacpp", {}).items():
            print(f"our default decode / llama.cpp's at {n} thr: {ratio:.2f}x")
    if "summarize_speed" in res:
        print(f"\ninfini summarize on a 100-page PDF, {res['summarize_speed']['words']} words, cached")
        for r in res["summarize_speed"]["rows"]:
            print(f"{r['threads']} thr  compiled {r['compiled_s']:6.2f} s  eager {r['eager_s']:6.2f} s  "
                  f"({r['words']} words; the same summary: {r['same_summary']})")
    if "ttft" in res:
        print(f"\ninfini ask on a 100-page PDF: {res['ttft']['question']}")
        for r in res["ttft"]["rows"]:
            print(f"{r['threads']} thr  {r['document']:9} {r.get('decoding', ''):8} first answer token {r['first_token_s']:6.2f} s  "
                  f"all {r['total_s']:6.2f} s  peak RSS {r['peak_rss_mb']} MB")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="ask,summarize,speed")
    ap.add_argument("--writer", default="smollm2", help="the writer's name or path")
    ap.add_argument("--reader", default="infini-mini")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--articles", type=int, default=10)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--stories", type=int, default=20)
    ap.add_argument("--split", default="test")
    ap.add_argument("--words", type=int, default=200)
    ap.add_argument("--answer-words", type=int, default=None,
                    help="ask-stories: words of a long answer (default: the product's, OPEN_ANSWER_WORDS)")
    ap.add_argument("--open-prompt", choices=("question", "summary"), default=None,
                    help="ask-stories: what the writer is asked for a long answer (default: the product's, "
                         "OPEN_PROMPT; for tuning on --split dev)")
    ap.add_argument("--open-bias", type=float, default=None,
                    help="ask-stories: the writer's logit bias towards the passages' words for a long answer "
                         "(default: the product's, OPEN_COPY_BIAS; for tuning on --split dev)")
    ap.add_argument("--threads", default="1,2", help="speed: thread counts; ask/summarize run on the first")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/infini-bench-writer"))
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--ask-prompt", choices=("chat", "shots"), default=None,
                    help="ask: how the writer is asked (default: the product's, tasks.ask.ASK_PROMPT)")
    ap.add_argument("--ask-shots", type=int, default=None,
                    help="ask: the first N of the product's worked examples only (for tuning on --article-offset 3)")
    ap.add_argument("--ask-ranked", type=int, default=None,
                    help="ask: the writer reads the best N evidence sentences beside the second hop "
                         "(default: the product's, tasks.ask.WRITER_RANKED; for tuning on --article-offset 3)")
    ap.add_argument("--ask-oracle", action="store_true",
                    help="ask: also the writer alone from the best-ranked sentence that holds a gold answer "
                         "(the ceiling of a perfect ranking; one more writer call a question)")
    ap.add_argument("--reps", type=int, default=3,
                    help="speed, llamacpp, summarize-speed: runs per row (the median is reported)")
    ap.add_argument("--gguf", type=Path, default=None, help="llamacpp: the GGUF the writer was converted from")
    ap.add_argument("--section-words", type=int, default=None,
                    help="summarize: words a section (the product's SECTION_WORDS); for tuning on --split dev")
    ap.add_argument("--summary-bias", type=float, default=None,
                    help="summarize: the writer's logit bias towards each section's words (default: the product's)")
    ap.add_argument("--ask-words-factor", type=float, default=None,
                    help="summarize: words asked of the writer per section / its share (default: the product's)")
    ap.add_argument("--no-repeat-ngram", type=int, default=None,
                    help="ask and summarize: no generated n-gram twice (default: the product's; 0: off)")
    ap.add_argument("--article-offset", type=int, default=0,
                    help="ask: start the article sample here (tuning on articles the reported sample skips)")
    ap.add_argument("--material", type=int, default=None,
                    help="summarize: source words per summary word (the product's MATERIAL); for tuning on dev")
    args = ap.parse_args(argv)
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks import summarize as summarize_task

    if args.section_words:
        summarize_task.SECTION_WORDS = args.section_words
    if args.material:
        summarize_task.MATERIAL = args.material
    if args.summary_bias is not None:
        summarize_task.SUMMARY_COPY_BIAS = args.summary_bias
    if args.ask_words_factor is not None:
        summarize_task.ASK_WORDS_FACTOR = args.ask_words_factor
    if args.ask_ranked is not None:
        ask_task.WRITER_RANKED = args.ask_ranked
    from infini_cli.tasks import open_questions

    if args.open_prompt is not None:
        open_questions.OPEN_PROMPT = args.open_prompt
    if args.open_bias is not None:
        open_questions.OPEN_COPY_BIAS = args.open_bias

    answer_words = args.answer_words or open_questions.OPEN_ANSWER_WORDS
    if args.no_repeat_ngram is not None:
        summarize_task.SUMMARY_NO_REPEAT_NGRAM = ask_task.NO_REPEAT_NGRAM = args.no_repeat_ngram

    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.errors import InputError
    from infini_cli.decode_compiled import load_compiled
    from infini_cli.loading import decode_kernels_for
    from infini_cli.registry import resolve_model

    try:
        writer_path = resolve_model(args.writer)
    except InputError as e:
        log(f"skipped: {e}")
        return 0
    if not args.data.exists() and {"ask", "ask-stories", "absent-rule", "summarize", "ttft", "summarize-speed"} & set(args.sections.split(",")):
        log(f"skipped: no data at {args.data}")
        return 0
    import torch

    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(threads[0])
    args.workdir.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    res: dict = {"writer": str(writer_path), "reader": args.reader, "threads": threads[0], "cpu": cpu_name(),
                 "section_words": summarize_task.SECTION_WORDS, "material": summarize_task.MATERIAL,
                 "summary_bias": summarize_task.SUMMARY_COPY_BIAS, "ask_words_factor": summarize_task.ASK_WORDS_FACTOR,
                 "summary_no_repeat_ngram": summarize_task.SUMMARY_NO_REPEAT_NGRAM,
                 "ask_no_repeat_ngram": ask_task.NO_REPEAT_NGRAM, "ask_article_offset": args.article_offset,
                 "ask_prompt": args.ask_prompt or ask_task.ASK_PROMPT, "ask_ranked": ask_task.WRITER_RANKED,
                 "open_prompt": open_questions.OPEN_PROMPT, "open_copy_bias": open_questions.OPEN_COPY_BIAS,
                 "ask_shots": len(ask_task.ASK_SHOTS[:args.ask_shots] if args.ask_shots is not None
                                  else ask_task.ASK_SHOTS)}
    if "ttft" in sections:  # first: a child's peak RSS counts this process's size when it started
        res["ttft"] = bench_ttft(args.data, args.workdir, threads, str(writer_path))
    if "summarize-speed" in sections:
        res["summarize_speed"] = bench_summarize_speed(args.data, args.workdir, threads, str(writer_path), args.words,
                                                       args.reps)
    if "absent-rule" in sections:
        res["absent_rule"] = bench_absent_rule(load_checkpoint(resolve_model(args.reader)), args.data, args.workdir,
                                               args.articles, args.questions, args.article_offset)
    if {"ask", "ask-stories", "summarize"} & set(sections):
        reader = load_checkpoint(resolve_model(args.reader))
        writer = load_checkpoint(writer_path, kernels=decode_kernels_for(writer_path, torch.device("cpu")))
        writer.compiled_decode = load_compiled(writer.model)  # as the product decodes (None: eager)
        res["decoding"] = "compiled" if writer.compiled_decode is not None else "eager"
        log(f"the writer decodes {res['decoding']}")
        if "ask" in sections:
            res["ask"] = bench_ask(reader, writer, args.data, args.workdir, args.articles, args.questions,
                                   args.article_offset, args.ask_prompt, args.ask_shots, args.ask_oracle)
        if "ask-stories" in sections:
            res["ask_stories"] = bench_ask_stories(reader, writer, args.data, args.workdir, args.stories, args.split,
                                                   answer_words)
        if "summarize" in sections:
            res["summarize"] = bench_summarize(reader, writer, args.data, args.workdir, args.stories, args.words,
                                               args.split)
    if "speed" in sections:
        res["speed"] = bench_speed(writer_path, threads, reps=args.reps)
    if "cuda" in sections:
        if torch.cuda.is_available():
            res["cuda"] = bench_speed_cuda(writer_path, reps=args.reps)
        else:
            log("cuda: skipped (no CUDA GPU here)")
    if "llamacpp" in sections:
        if args.gguf is None:
            log("llamacpp: skipped (give --gguf, the writer's GGUF file)")
        else:
            try:
                res["llamacpp"] = bench_llamacpp(args.gguf, threads, reps=args.reps)
            except ImportError:
                log("llamacpp: skipped (pip install llama-cpp-python)")
    if "speed" in res and "llamacpp" in res:
        rows = res["speed"]["rows"]  # the product's default: compiled where pulled so, else eager int4+int8
        default = ([r for r in rows if r["weights"].endswith("(default)")]
                   or [r for r in rows if r["weights"] == "int4+int8 kernels"])
        ours = {r["threads"]: r["decode_tokens_per_s"] for r in default}
        theirs = {r["threads"]: r["decode_tokens_per_s"] for r in res["llamacpp"]["rows"]}
        res["decode_vs_llamacpp"] = {str(n): round(ours[n] / theirs[n], 3) for n in ours if n in theirs}
    print_report(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
