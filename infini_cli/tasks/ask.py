"""`infini ask`: a grounded answer with its evidence and where it is in the document.

The document streams through the reader once (or comes from the cache); as it does, a fixed
pool of candidate sentences is kept for the question (see ask_scoring.AskPool). The pool is
ranked with the whole document's statistics, and the answer is written by the writer after
worked examples: a phrase copied word for word from the best evidence sentence
(stream.CopySpans), or, where the answer may be one step on (wants_second_hop), written from
the best evidence and its second hop (ask_scoring.second_hop, from the cached sentences), the
best last; "Who is X?" of a name is answered in its chat template ("written"; a phrase that
first restates the question is cut to the answer, restatement.py). A name the document spells
otherwise is read in its spelling (ask_scoring.respelled_names);
without a writer it is the best evidence itself ("extractive"), or, for a
checkpoint of ours trained to answer, generated from the saved document memory with the
evidence and the question in its local window ("generated"). An open question ("Describe the
setting.", "What happens to X?") is answered long instead: a summary focused on it
(open_questions.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from rich.console import Console

from ..checkpoint import LoadedModel
from ..errors import InputError
from ..memory import StreamState
from ..readers import Document
from .ask_scoring import (AskPool, AskWeights, QuestionScorer, asks_about_a_name, document_forms,
                          lacks_what_is_asked, names_someone, rank_for_question, respell, respelled_names, second_hop,
                          unknown_names, unmentioned_words)
from .lexical import STOPWORDS, DocumentStats, words
from .modes import ABSENT, EXTRACTIVE, GENERATED, WRITTEN
from .open_questions import FOCUS_POOL, OPEN_ANSWER_WORDS, answer_length, answer_open, subject_question
from .passages import DocumentIndex, Passage
from .reading import generates_answers, read_or_load
from .summary_scoring import SummaryPool
from .restatement import RestatementFilter, drop_restatement, echoes_question
from .writer import NOT_IN_DOCUMENT, complete, fit_passages, write

RANKED_DEPTH = 8             # evidence ranked this deep for the writer (the second hop looks beyond it)
# The writer reads the best WRITER_RANKED evidence sentences and the second hop (HOP_PASSAGES at
# most), the most important last, nearest the question: the 135M writer answers from what it
# read last, and every sentence more leads it astray. SQuAD dev articles 3, 9, ..., 45 (160
# questions), `ask` as benchmarked (bench_writer.py --sections ask --article-offset 3): token F1
# 19.9 with the best 8 (hop included) in document order (commit 53f365d), 35.3 with these,
# 36.4 with "who is" in the chat template only of a name (write_answer; 38.5 without the rule).
# Exploring first (the writer alone, without the absent rule; a scratch script): 21.8 with the
# best 8 in document order, 31.2 with the same 8 the best last, 37.9 with the best alone,
# 36.7 / 34.1 / 37.3 / 37.9 / 35.6 with the best 2 / 3 / 4 / 5 / 6 the best last and no hop,
# and 34.6 / 37.0 / 34.6 with the best 1 / 2 / 4 after the hop (kept: questions that take two
# steps; on BABILong it answers qa2 at all only with the hop, README).
WRITER_RANKED = 2
HOP_PASSAGES = 3
# A phrase copied, word for word, from the best evidence sentence alone (stream.CopySpans: the
# answer can only continue a run of the passage's tokens, then end), unless the answer may be
# one step on (wants_second_hop: a question that names no one, whose best evidence lacks the
# place, time or number it asks for, "Where is the football?" of "Daniel picked up the
# football."): then the best 2 and the hop, written freely. The 135M writer otherwise
# paraphrases, adds words, or takes its answer from a sentence it should not. SQuAD dev articles
# 3, 9, ..., 45 (160 questions; bench_writer.py --sections ask --article-offset 3), every
# question answered one way, token F1 / EM: 37.87 / 27.50 as shipped before (the best 2 and the
# hop, free), 41.41 / 29.38 the best alone, free; 43.55 / 33.75 the best alone, copied (the
# hop's rule takes no dev question), 18 of the answers empty (an end chosen first), and 45.50 /
# 34.38 with at least one token copied (shipped); 37.72 / 28.75 copied from the best 2; 35.15 / 27.50
# copied from the best 2 and the hop; 39.03 / 29.38 with the hop for every question that names
# no one (60 of 64 such questions then scored 28.6 against 39.9 copied); with "The document does
# not say." a span it may copy, it did so for 4.4% of the answerable questions (F1 -1.3). Given
# the sentence that holds the answer (--ask-oracle), 52.19 / 37.50 free and 58.81 / 45.62
# copied. On BABILong (`infini babilong --method writer`, 20 samples a cell) qa1-qa5 27% / 38%
# at 0 / 4K tokens before, 29% / 46% as shipped (qa4 30 / 45 -> 50 / 65, qa5 0 / 35 -> 5 / 70;
# qa1 60 -> 50: "Where is Mary?" copied from the best sentence alone, not always her latest;
# qa2 stays at 40, the hop); 23% / 35% copied with empty answers allowed, 25% / 40% (empty
# allowed) copied from the best 2.
ASK_COPY_SPANS = True
WRITER_COPIED = 1
WRITER_ANSWER_TOKENS = 48
# ECHO_RETRY: an answer made of nothing but the question's words and stop words ("Yuan" to
# "What dynasty came before the Yuan?"; 26 of 160 dev questions given the best evidence alone,
# a scratch count)
# is asked again, its first token anything but the start of such a word (echo_tokens): the
# writer's next choice is often the answer ("colonialism", "Ming", "Pope"). SQuAD dev articles
# 3, 9, ..., 45 (bench_writer.py --sections ask --article-offset 3): ask's token F1 36.3 ->
# 37.9, the writer alone 39.2 -> 40.8. Not for "Who is X?" in the chat template: asked again,
# "Little Ann is Little Ann." became "L.A. is Little Ann.".
# Logit bias towards the evidence's tokens: the 135M writer otherwise invents names and
# numbers. Chosen on SQuAD dev articles 1, 3, 5, 7 (24 questions; none in the benchmark's
# sample): token F1 19.0 without, 23.2 at 3, 26.5 at 6 with an instruction to answer in a few words
# taken from the passages (32 tokens at most; the shipped wording and limit differ slightly).
COPY_BIAS = 6.0
# With the worked examples the writer copies without it: dev F1 (as above, the writer alone)
# 37.2 without, 34.8 at +2, 26.5 at +4.
SHOTS_COPY_BIAS = 0.0
# No n-gram of an answer twice (stream.NgramBan): off. SQuAD dev articles 3, 9, ..., 45 (160
# questions): token F1 15.72 without, 15.48 with 3-grams banned, 15.63 with 4-grams; a loop in
# an answer ends it instead (writer._repeats).
NO_REPEAT_NGRAM = 0
ASK_SYSTEM = ("You answer questions about a document using only the numbered passages taken from it. "
              "Answer briefly, in a few words taken from the passages. If the passages do not contain the "
              f"answer, reply exactly: {NOT_IN_DOCUMENT}")
# How the writer is asked. "chat": its chat template, ASK_SYSTEM and the numbered passages
# (copy bias COPY_BIAS). "shots": a plain completion prompt, ASK_INSTRUCTION and worked
# examples (invented, about no document) before the passages and the question, the answer the
# rest of its line (no copy bias: it copies without). In the chat template the 135M writer
# restates the question in a sentence around the answer. SQuAD dev articles 3, 9, ..., 45 (160
# questions; bench_writer.py --sections ask --article-offset 3 --ask-prompt P --ask-shots N),
# every question asked one way: token F1 15.30 chat, 18.79 with the first two examples (exact
# match 0.0 and 9.4), 12.68 with a third whose answer was absent (it then said "does not say"
# for 39% of the answerable questions). With "who is" questions in the chat template
# (write_answer): 18.90 with two examples, 19.91 with the three below (exact match 10.0).
ASK_PROMPT = "shots"
ASK_INSTRUCTION = ("Answer each question with a short phrase taken from the passage. If the passage does not "
                   f"answer it, reply: {NOT_IN_DOCUMENT}")
ASK_SHOTS = (
    ("The bridge over the river was finished in 1887 by the engineer Karl Weiss, who had designed it for "
     "the railway.", "Who finished the bridge?", "Karl Weiss"),
    ("After the flood of 1921 the town council voted to move the market to the hill above the harbour.",
     "Where was the market moved?", "to the hill above the harbour"),
    ("The expedition left the coast with forty porters, and only twelve of them reached the lake in March.",
     "How many porters reached the lake?", "twelve"),
)
DEFAULT_WEIGHTS = AskWeights()
MAX_ANSWER_TOKENS = 96
ANSWER_RESERVE = 16  # answer tokens kept in the question's segment where they fit


def check_answer(question: str, answer: str, top_k: int, n_words: int) -> str:
    """The answer's kind ("open" or "short") for --answer; bad options fail in one line."""
    if top_k < 1:
        raise InputError(f"--top-k {top_k}: give at least 1")
    if n_words < 10:
        raise InputError(f"--words {n_words}: give at least 10")
    kind = answer_length(question, answer)
    if kind is None:
        raise InputError(f"--answer {answer}: give auto, short or long")
    return kind


def check_question(question: str) -> str:
    q = " ".join(question.split())
    if not q:
        raise InputError("the question is empty; pass it as the second argument, "
                         "e.g. infini ask report.pdf \"Who signed it?\"")
    return q


@dataclass
class AskResult:
    question: str
    answer: str
    mode: str
    evidence: list[Passage]
    facts: dict  # DocumentRead.run_facts: the document and the run
    warnings: list[str] = field(default_factory=list)
    writer: Optional[str] = None
    second_hop: list[Passage] = field(default_factory=list)  # sentences one name away, the writer read them too
    unmentioned: list[str] = field(default_factory=list)  # the question's words the document never uses
    kind: str = "short"  # "open": a focused summary (open_questions.py); "short": a phrase or a sentence
    sections: list[dict] = field(default_factory=list)  # an open answer's written parts and where they come from

    @property
    def answered(self) -> bool:
        """False when the writer said the document does not hold the answer."""
        return bool(self.answer) and NOT_IN_DOCUMENT.lower().rstrip(".") not in self.answer.lower()

    def as_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "mode": self.mode, "answered": self.answered,
                "evidence": [p.evidence() for p in self.evidence],
                "second_hop": [p.evidence() for p in self.second_hop], "unmentioned": self.unmentioned, **self.facts,
                "answer_kind": self.kind, "sections": self.sections, "writer": self.writer, "warnings": self.warnings}


def writer_messages(question: str, passages: list[str]) -> list[dict[str, str]]:
    numbered = "\n".join(f"[{i}] {t}" for i, t in enumerate(passages, 1))
    return [{"role": "system", "content": ASK_SYSTEM},
            {"role": "user", "content": f"Passages:\n{numbered}\n\nQuestion: {question}"}]


def shots_prompt(question: str, passages: list[str], shots: Sequence[tuple[str, str, str]] = ASK_SHOTS) -> str:
    """ASK_PROMPT "shots": the instruction, the worked examples, then the passages (one
    paragraph) and the question, ending where the answer starts."""
    def block(passage: str, q: str) -> str:
        return f"Passage: {passage}\nQuestion: {q}\nAnswer:"

    done = "".join(f"{block(p, q)} {a}\n\n" for p, q, a in shots)
    return f"{ASK_INSTRUCTION}\n\n{done}{block(' '.join(passages), question)}"


def write_answer(writer: LoadedModel, evidence: list[Passage], question: str,
                 on_text: Optional[Callable[[str], None]] = None, max_tokens: int = WRITER_ANSWER_TOKENS,
                 bias: Optional[float] = None, prompt: Optional[str] = None,
                 shots: Sequence[tuple[str, str, str]] = ASK_SHOTS, copy: bool = False) -> str:
    """The writer's answer from the evidence (most important first) that fits its window,
    shown to it the other way round: the most important last, nearest the question
    (WRITER_RANKED). prompt: ASK_PROMPT unless given; shots: its worked examples; copy: a
    phrase of the evidence word for word ("shots" only; ASK_COPY_SPANS)."""
    # "Who is X?" of a name wants X described; given the worked examples the writer answers with
    # a name ("Lord John Roxton"), in its chat template with a sentence about X
    prompt = prompt or ("chat" if asks_about_a_name(question) else ASK_PROMPT)
    if prompt not in ("chat", "shots"):
        raise ValueError(f"unknown ask prompt {prompt!r}")
    window = writer.config.segment_len
    max_tokens = min(max_tokens, window // 4)

    def budget_with(k: int) -> int:
        """Tokens left for the evidence with the first k worked examples (or the chat prompt)."""
        empty = str(writer_messages(question, [])) if prompt == "chat" else shots_prompt(question, [], shots[:k])
        return window - max_tokens - len(writer.tokenizer.encode(empty)) - 64

    # the examples give way to the evidence in a small window: fewer, down to none
    k = len(shots)
    while prompt == "shots" and k > 0 and budget_with(k) < window // 4:
        k -= 1
    shots, budget = shots[:k], budget_with(k)
    if budget < 32:
        raise InputError(f"{writer.header.path}: its window ({writer.config.segment_len} tokens) is too small for "
                         "a question and its evidence; convert it with a larger --segment-len")
    texts = fit_passages(writer, [p.text for p in evidence], budget)[::-1]  # a prefix, its last maybe cut
    if prompt == "shots":  # a phrase: what restates the question is dropped, as it streams too
        text = shots_prompt(question, texts, shots)
        kwargs = dict(sources=texts + [question], bias=SHOTS_COPY_BIAS if bias is None else bias,
                      no_repeat_ngram=NO_REPEAT_NGRAM, one_line=True,
                      copy_from=texts if copy else ())
        shown = RestatementFilter(question, on_text)
        answer = complete(writer, text, max_tokens, shown, **kwargs)
        if echoes_question(answer, question):  # held back, never shown: asked once more (ECHO_RETRY)
            shown = RestatementFilter(question, on_text)
            answer = complete(writer, text, max_tokens, shown, avoid_first=echo_tokens(writer, question, answer), **kwargs)
        shown.finish()
        answer = drop_restatement(answer, question)
        if not re.search(r"\w", answer):  # nothing left but punctuation: the best evidence, as without a writer
            answer = evidence[0].text
            if on_text is not None:
                on_text(answer)
        return answer
    return write(writer, writer_messages(question, texts), max_tokens, on_text, sources=texts + [question],
                 bias=COPY_BIAS if bias is None else bias, no_repeat_ngram=NO_REPEAT_NGRAM)


def echo_tokens(writer: LoadedModel, question: str, echo: str) -> list[int]:
    """The tokens an answer that echoes the question starts with: the echo's own first token
    and the first token of each word of the question and of every stop word, after a space,
    capitalised or not (and without the space where the word is one token)."""
    tok = writer.tokenizer
    first = {tok.encode(echo.strip())[0], tok.encode(" " + echo.strip())[0]}
    for w in set(words(question)) | STOPWORDS:
        for form in {w, w.capitalize()}:
            first.add(tok.encode(" " + form)[0])
            if len(alone := tok.encode(form)) == 1:
                first.add(alone[0])
    return sorted(first)


def wants_second_hop(question: str, best: Passage) -> bool:
    """The answer may be one step on from the best evidence (the second hop): the question
    names no one, and its best evidence lacks what it asks for ("Where is the football?" of
    "Daniel picked up the football.": no place). Otherwise the best evidence answers it, copied
    (ASK_COPY_SPANS; without it, every question takes the hop)."""
    return not ASK_COPY_SPANS or (not names_someone(question) and lacks_what_is_asked(question, best.text))


def writer_plan(question: str, ranked: list[Passage], hop: list[Passage]) -> tuple[list[Passage], bool]:
    """What the writer reads, most important first (what does not fit its window is dropped
    from the end), and whether it copies its answer from it: without a second hop, for a
    question other than "Who is X?", the best evidence alone, copied (ASK_COPY_SPANS); else
    the best WRITER_RANKED, then the second hop, written freely."""
    if ASK_COPY_SPANS and not hop and not asks_about_a_name(question):
        return ranked[:WRITER_COPIED], True
    return ranked[:WRITER_RANKED] + hop, False


def writer_reading(question: str, ranked: list[Passage], sentences: Optional[Callable[[], Iterable[Passage]]],
                   stats: DocumentStats) -> tuple[list[Passage], bool, list[Passage]]:
    """writer_plan's reading and copying, and the second hop it includes: looked up in
    `sentences` (the document's sentences once more; None where they are not cached: no hop)
    where the question wants one (wants_second_hop)."""
    hop: list[Passage] = []
    if ranked and sentences is not None and wants_second_hop(question, ranked[0]):
        hop = second_hop(question, ranked, sentences(), stats, HOP_PASSAGES)
    return (*writer_plan(question, ranked, hop), hop)


def generate_answer(loaded: LoadedModel, state: StreamState, evidence: list[Passage], question: str,
                    on_text: Optional[Callable[[str], None]] = None, max_tokens: int = MAX_ANSWER_TOKENS) -> str:
    """Generate from the document memory with the evidence and the question in the local window."""
    from ..stream import generate

    tok = loaded.tokenizer
    context = "\n".join(p.text for p in evidence)
    prompt = tok.encode(context + f"\nQuestion: {question}\nAnswer:")
    # the question line and the answer's start share a segment where they fit
    n_question = len(prompt) - len(tok.encode(context))
    ids: list[int] = []
    shown = ""
    for t in generate(loaded.model, state, prompt, max_tokens, question_tokens=n_question,
                      answer_reserve=ANSWER_RESERVE,
                      stop=lambda out: out[-1] == tok.eos_id or "\n" in tok.decode(out).strip()):
        if t == tok.eos_id:
            break
        ids.append(t)
        text = tok.decode(ids)
        if "\n" in text.strip():
            break
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        shown = text
    return shown.strip()


def rank_passages(question: str, passages, index: DocumentIndex, top_k: int, weights: AskWeights = DEFAULT_WEIGHTS,
                  pool_size: int = 256) -> list[Passage]:
    """Rank an iterable of passages for a question with complete statistics (cached documents,
    benchmarks): the same pool and scoring as a live read, one pass, bounded memory."""
    pool = AskPool(QuestionScorer(question, weights), pool_size)
    for p in passages:
        pool.add(p, index.stats)
    return rank_for_question(pool, index.stats, top_k)


def ask(
    loaded: LoadedModel,
    doc: Document,
    question: str,
    top_k: int = 3,
    use_cache: bool = True,
    quiet: bool = False,
    console: Optional[Console] = None,
    on_text: Optional[Callable[[str], None]] = None,
    weights: AskWeights = DEFAULT_WEIGHTS,
    cache_root=None,
    writer: Optional[LoadedModel] = None,
    answer_kind: str = "auto",
    n_words: int = OPEN_ANSWER_WORDS,
) -> AskResult:
    """Read `doc` with `loaded` (the reader: memory, cache, evidence) and answer; with a
    `writer`, the answer is written by it from the best evidence. answer_kind: "short" (a phrase or
    a sentence), "long" (a focused summary of about `n_words` words, open_questions.py) or "auto"
    (long for an open question: "Describe ...", "What happens to X?")."""
    started = time.perf_counter()
    question = check_question(question)
    kind = check_answer(question, answer_kind, top_k, n_words)
    # an open question's evidence goes by its subject: its framing words ("describe", "story",
    # "relationship") are not what the document must use to answer it
    def scored(q: str) -> str:
        return subject_question(q) if kind == "open" else q

    asked = scored(question)
    pool = AskPool(QuestionScorer(asked, weights), size=max(256, 4 * top_k, 4 * RANKED_DEPTH))
    consumers = [lambda p, idx: pool.add(p, idx.stats)]
    summary_pool = SummaryPool()
    if kind == "open":
        consumers.append(summary_pool.add)
    read = read_or_load(loaded, doc, consumers, use_cache, quiet, console, cache_root)
    n_rank = max(top_k, RANKED_DEPTH) if writer is not None else top_k
    depth = max(n_rank, FOCUS_POOL if kind == "open" else 0)
    warnings = list(read.warnings)
    respelled = respelled_names(question, read.index.stats) if read.sentences is not None else {}
    if respelled:  # a name the document spells otherwise: asked again, in its spelling, of its sentences
        question = respell(question, document_forms(respelled, read.sentences()))
        asked = scored(question)
        warnings.append(f"read the question as \"{question}\": the document's spelling of {', '.join(respelled)}")
        ranked = rank_passages(asked, read.sentences(), read.index, depth, weights)
    else:
        ranked = rank_for_question(pool, read.index.stats, depth)
    evidence = ranked[:top_k]
    writer_name = str(writer.header.path) if writer is not None else None
    # an open question is turned away only for a name the document never uses (unknown_names)
    unmentioned = (unknown_names(question, read.index.stats) if kind == "open"
                   else unmentioned_words(question, read.index.stats))
    if unmentioned is not None:  # the document cannot answer it: nothing is written or generated
        warnings.append("the document never uses these words of the question: " + ", ".join(unmentioned))
        if on_text is not None:
            on_text(NOT_IN_DOCUMENT)
        return AskResult(question, NOT_IN_DOCUMENT, ABSENT, evidence, read.run_facts(loaded, started), warnings,
                         writer=writer_name, unmentioned=unmentioned, kind=kind)
    if kind == "open":
        text, chosen, sections = answer_open(question, summary_pool.candidates(), ranked, read.index, n_words, writer,
                                             on_text)
        if not chosen:
            warnings.append("no sentence of 5 to 60 words found to answer with")
        return AskResult(question, text, WRITTEN if writer is not None else EXTRACTIVE, chosen,
                         read.run_facts(loaded, started), warnings, writer=writer_name, kind=kind, sections=sections)
    ranked = ranked[:n_rank]
    if writer is not None:
        mode = WRITTEN
        hop: list[Passage] = []
        if ranked:
            read_by_writer, copy, hop = writer_reading(question, ranked, read.sentences, read.index.stats)
            answer = write_answer(writer, read_by_writer, question, on_text, copy=copy)
        else:
            answer = NOT_IN_DOCUMENT
            if on_text is not None:
                on_text(answer)
        return AskResult(question, answer, mode, evidence, read.run_facts(loaded, started), warnings,
                         writer=writer_name, second_hop=hop)
    if generates_answers(loaded) and evidence:
        mode = GENERATED
        answer = generate_answer(loaded, read.state, evidence, question, on_text)
    else:
        mode = EXTRACTIVE
        answer = evidence[0].text if evidence else ""
        if not evidence:
            warnings.append("no sentence of the document shares a content word with the question")
        if on_text is not None and answer:
            on_text(answer)
    return AskResult(question, answer, mode, evidence, read.run_facts(loaded, started), warnings)
