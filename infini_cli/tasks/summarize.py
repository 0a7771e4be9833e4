"""`infini summarize`: a summary whose every part says where in the document it comes from.

The document streams once (or comes from the cache); a pool keeps the best candidates of each
region of the document, so the summary can cover the whole arc of a 600-page book from a
bounded set. The final selection scores the pool with the whole document's statistics and
picks sentences greedily, avoiding repeats, up to the word (or sentence) budget, then prints
them in document order. With a writer (a converted chat model), a larger selection is cut into
consecutive sections and the writer summarizes each, citing its pages or lines ("written"); a
checkpoint of ours that can write (`"generates_answers": true`) writes from the document memory
with the chosen sentences in its window ("generated").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from rich.console import Console

from ..checkpoint import LoadedModel
from ..errors import InputError
from ..memory import StreamState
from ..readers import Document
from .lexical import terms
from .modes import EXTRACTIVE, GENERATED, WRITTEN
from .passages import DocumentIndex, Passage
from .summary_scoring import Budget, SummaryPool, fit_budget, select_summary
from .reading import generates_answers, read_or_load
from .writer import fit_passages, write

# The writer summarizes the extractive selection section by section (document order), each
# section's summary citing its pages or lines: MATERIAL times the budget in source words,
# in sections of at most SECTION_TOKENS tokens.
MATERIAL = 3
MIN_MATERIAL_WORDS = 450
SECTION_TOKENS = 700
SECTION_WORDS = 30
# The wording and SECTION_WORDS were compared on SQuALITY dev (20 stories, 200 words; ROUGE-L
# of the written summary): "at most" and 40 words 16.31, "about" 16.27, 60 words a section 16.15
# (the writer in float32); with the int4 decoding kernels, 30 words a section 16.94 against 16.57
# for 40 (and on 10 stories: 25 words 16.76, 30 words 17.35, 40 words 17.21). The writer stops
# short of its share either way; asking 1.3x its share (then cutting) gave 17.10 on 10 stories.
SECTION_ASK = "Summarize these passages in at most {words} words."
MAX_SECTIONS = 8
# A logit bias towards the section's words (writer.copy_bias), as ask uses: on SQuALITY dev
# (10 stories) ROUGE-L 17.21 without, 16.76 at +3; so none (bench_writer --summary-bias).
SUMMARY_COPY_BIAS = 0.0
# No 3-gram of a section's summary twice (stream.NgramBan): the writer otherwise loops ("The
# story: A story of a story. The plot: A story of a story."). SQuALITY dev, 20 stories: ROUGE-L
# 16.90 without, 16.92 with 3-grams banned, 16.89 with 4-grams (R-1 33.20, 33.50, 33.85).
SUMMARY_NO_REPEAT_NGRAM = 3
ASK_WORDS_FACTOR = 1.0  # words asked of the writer per section / its share of --words (cut to the share)
SUMMARY_SYSTEM = ("You summarize passages taken in order from one document. Write a faithful summary in plain "
                  "prose, in your own words: who does what, and what happens. No lists, no headings, no "
                  "comments about the passages.")


def check_budget(words: Optional[int], sentences: Optional[int]) -> Budget:
    if words is not None and sentences is not None:
        raise InputError("give --words or --sentences, not both")
    if sentences is not None:
        if sentences < 1:
            raise InputError(f"--sentences {sentences}: give at least 1")
        return Budget(words=None, sentences=sentences)
    w = 200 if words is None else words
    if w < 1:
        raise InputError(f"--words {w}: give at least 1")
    return Budget(words=w)


@dataclass
class SummaryResult:
    summary: str
    mode: str
    evidence: list[Passage]
    facts: dict  # DocumentRead.run_facts: the document and the run
    budget: Budget
    warnings: list[str] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)   # written summaries: text and where it came from
    writer: Optional[str] = None

    def as_dict(self) -> dict:
        return {"summary": self.summary, "mode": self.mode, "evidence": [p.evidence() for p in self.evidence],
                "sections": self.sections, "writer": self.writer,
                "words": len(self.summary.replace(" …", "").split()),
                "budget": {"words": self.budget.words, "sentences": self.budget.sentences},
                **self.facts, "warnings": self.warnings}


def summarize_passages(passages, index: DocumentIndex, budget: Budget) -> list[Passage]:
    """Summary sentences of an iterable of passages with complete statistics (benchmarks, cache)."""
    pool = SummaryPool()
    for p in passages:
        pool.add(p, index)
    return select_summary(pool.candidates(), index, budget)


def generate_summary(loaded: LoadedModel, state: StreamState, chosen: list[Passage], budget: Budget,
                     on_text: Optional[Callable[[str], None]] = None) -> str:
    from ..stream import generate

    tok = loaded.tokenizer
    prompt = "\n".join(p.text for p in chosen) + "\nSummary:"
    limit = int(1.6 * (budget.words or 30 * (budget.sentences or 5)))
    ids: list[int] = []
    shown = ""
    for t in generate(loaded.model, state, tok.encode(prompt), limit):
        if t == tok.eos_id:
            break
        ids.append(t)
        text = tok.decode(ids)
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        shown = text
    return shown.strip()


def _where(group: list[Passage]) -> dict:
    if group[0].page is not None:
        return {"pages": [group[0].page, group[-1].page]}
    return {"lines": [group[0].line, group[-1].line]}


def _where_text(w: dict) -> str:
    a, b = w.get("pages") or w.get("lines")
    kind = "p." if "pages" in w else "line"
    kinds = "pp." if "pages" in w else "lines"
    return f"{kind} {a}" if a == b else f"{kinds} {a}-{b}"


def sections_of(loaded: LoadedModel, chosen: list[Passage], n_sections: int,
                max_tokens: int = SECTION_TOKENS) -> list[list[Passage]]:
    """The chosen sentences (document order) in about n_sections consecutive groups of about
    equal size, none over max_tokens (so each fits the writer's window with room to write)."""
    tok = loaded.tokenizer
    sizes = [len(tok.encode(p.text)) for p in chosen]
    total = sum(sizes)
    per = min(max_tokens, max(1, -(-total // max(1, n_sections))))
    groups: list[list[Passage]] = [[]]
    used: list[int] = [0]
    for p, n in zip(chosen, sizes):
        if groups[-1] and used[-1] + n > per:
            groups.append([])
            used.append(0)
        groups[-1].append(p)
        used[-1] += n
    # what is left over at the end (a sentence or two) joins the section before it where that
    # fits: alone, the writer was asked to summarize one sentence in N words and padded it
    if len(groups) > 1 and used[-1] < per / 3 and used[-2] + used[-1] <= max_tokens:
        last = groups.pop()
        groups[-1] += last
    return [g for g in groups if g]


def _says_one_thing_over(sentence: str) -> bool:
    """At least 3 content terms, half or more of them repeats: a small writer's degenerate
    sentence ("The scene: A scene of a scene.") rather than one that says something."""
    ts = terms(sentence)
    return len(ts) >= 3 and 2 * len(set(ts)) <= len(ts)


def _tidy(text: str) -> str:
    """One paragraph, each sentence once, none that only repeats a word: a small writer
    sometimes says a sentence twice, or loops on one word."""
    seen: set[str] = set()
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        key = " ".join(sentence.lower().split())
        if key and key not in seen and not _says_one_thing_over(sentence):
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")


def _cut_to_words(text: str, words: int) -> str:
    """At most `words` words, ending at a sentence end: the last one in the second half of
    what is kept, else the words kept end with " …". A text the writer left unfinished
    (it ran out of tokens) is treated the same way, so no summary part stops mid-sentence
    unmarked."""
    ws = text.split()
    cut = " ".join(ws[:words])
    ends = [m.end() for m in _SENTENCE_END.finditer(cut)]
    if ends and ends[-1] == len(cut):
        return cut
    if ends and ends[-1] >= len(cut) // 2:
        return cut[: ends[-1]]
    return cut + " …" if cut else cut


def section_request(words: int) -> str:
    return SECTION_ASK.format(words=words)


def write_summary(writer: LoadedModel, chosen: list[Passage], budget: Budget,
                  on_text: Optional[Callable[[str], None]] = None,
                  request: Callable[[int], str] = section_request,
                  bias: Optional[float] = None) -> tuple[str, list[dict]]:
    """Section summaries in document order, each at its share of the budget, each citing where.
    request(words): what the writer is asked after each section's passages; bias: its logit
    bias towards their words (SUMMARY_COPY_BIAS unless given)."""
    words = budget.words or 25 * (budget.sentences or 5)
    # about SECTION_WORDS words a section, so the summary follows the document from its first
    # chosen pages to its last instead of leaning on whatever the writer noticed first
    groups = sections_of(writer, chosen, min(MAX_SECTIONS, max(2, round(words / SECTION_WORDS))))
    share = max(15, words // len(groups))
    parts: list[dict] = []
    slack = 0  # words earlier sections left unused: a later one may end its sentence with them
    for i, g in enumerate(groups):
        where = _where(g)
        asked = round(share * ASK_WORDS_FACTOR)  # the writer stops short of what it is asked for
        ask = request(asked)
        fixed = len(writer.tokenizer.encode(SUMMARY_SYSTEM + ask)) + 64
        max_tokens = int(asked * 1.6) + 16
        texts = fit_passages(writer, [p.text for p in g], writer.config.segment_len - max_tokens - fixed)
        messages = [{"role": "system", "content": SUMMARY_SYSTEM},
                    {"role": "user", "content": "Passages:\n" + "\n".join(texts) + "\n\n" + ask}]
        if on_text is not None and i:
            on_text(" ")
        written = write(writer, messages, max_tokens, sources=texts,
                        bias=SUMMARY_COPY_BIAS if bias is None else bias,
                        no_repeat_ngram=SUMMARY_NO_REPEAT_NGRAM)
        text = _cut_to_words(_tidy(written), share + slack)
        slack = max(0, share + slack - len(text.replace(" …", "").split()))
        if on_text is not None:
            on_text(text + f" [{_where_text(where)}]")
        parts.append({"summary": text, **where})
    summary = " ".join(p["summary"] for p in parts)
    return summary, parts


def summarize(
    loaded: LoadedModel,
    doc: Document,
    budget: Budget = Budget(),
    use_cache: bool = True,
    quiet: bool = False,
    console: Optional[Console] = None,
    on_text: Optional[Callable[[str], None]] = None,
    cache_root=None,
    writer: Optional[LoadedModel] = None,
) -> SummaryResult:
    """Read `doc` with `loaded` (the reader) and summarize; with a `writer`, the summary is
    written section by section from a larger extractive selection."""
    started = time.perf_counter()
    pool = SummaryPool()
    read = read_or_load(loaded, doc, [pool.add], use_cache, quiet, console, cache_root)
    words = budget.words or 25 * (budget.sentences or 5)
    material = Budget(words=max(MIN_MATERIAL_WORDS, MATERIAL * words)) if writer is not None else budget
    chosen = select_summary(pool.candidates(), read.index, material)
    warnings = list(read.warnings)
    if not chosen:
        warnings.append("no sentence of 5 to 60 words found to summarize with")
    if writer is not None and chosen:
        text, sections = write_summary(writer, chosen, budget, on_text)
        return SummaryResult(text, WRITTEN, chosen, read.run_facts(loaded, started), budget, warnings,
                             sections, str(writer.header.path))
    if generates_answers(loaded) and chosen:
        mode = GENERATED
        text = generate_summary(loaded, read.state, chosen, budget, on_text)
    else:
        mode = EXTRACTIVE
        text, chosen = fit_budget(chosen, budget)
        if on_text is not None and text:
            on_text(text)
    return SummaryResult(text, mode, chosen, read.run_facts(loaded, started), budget, warnings)
