"""Evidence: sentences with provenance as the text streams by, bounded candidate pools, scoring.

Everything here is bounded whatever the document's length: the splitter holds one unfinished
sentence, the statistics grow with the vocabulary, and the pools keep a fixed number of
candidates. The final ranking runs over a pool, with the statistics of the whole document.

Scores (measured in benchmarks/bench_quality.py, numbers in the README):

- ask, lexical: BM25 over stemmed, stop-word-free terms, plus shared term bigrams, plus an
  answer-type bonus (a "when" question wants a year or a month, "how many" a number, "who" a
  capitalised name); a sentence that is itself a question counts half. Model: `question_gain`
  (the model's log-likelihood of the question with a passage before it, minus without) for the
  best few; with the bundled model it moved SQuAD top-1/top-3 by +0.1 point on held-out
  articles (noise), so AskWeights.model is 0 by default.
- summarize: a linear score over per-sentence features (centrality against the document's
  tf-idf centroid, main characters' names, position, dialogue, first person ...), weights fitted
  by least squares on SQuALITY train+dev against each sentence's overlap with the reference
  summaries; then a greedy, redundancy-aware selection up to the word budget. The model's
  `memory_gain` (likelihood with the document memory minus without) did not help on SQuALITY
  dev and is off by default (summarize.MODEL_WEIGHT).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .lexical import STOPWORDS, DocumentStats, stem, terms, words
from .sentences import Sentence, SentenceSplitter

if TYPE_CHECKING:
    from ..checkpoint import LoadedModel
    from ..incremental import TokenChunk
    from ..memory import StreamState


# ----------------------------------------------------------------------------- passages

@dataclass
class Passage:
    """One sentence of the document with where it is, and its content terms."""

    text: str
    index: int  # sentence number in the document, from 0
    char_offset: int
    page: Optional[int]  # 1-based page (PDF), None for text
    line: int  # 1-based line of its first character
    terms: list[str]
    score: float = 0.0

    def as_record(self) -> dict:
        return {"i": self.index, "o": self.char_offset, "p": self.page, "l": self.line, "x": self.text,
                "t": " ".join(self.terms)}

    @classmethod
    def from_record(cls, r: dict) -> "Passage":
        return cls(r["x"], r["i"], r["o"], r["p"], r["l"], r["t"].split() if r["t"] else [])

    @classmethod
    def from_sentence(cls, s: Sentence) -> "Passage":
        return cls(s.text, s.index, s.char_offset, s.page, s.line, terms(s.text))

    def evidence(self, score: Optional[float] = None) -> dict:
        return {"text": self.text, "page": self.page, "line": self.line,
                "score": round(self.score if score is None else score, 4), "sentence": self.index}


# Capitalised words not at a sentence start: candidates for characters' and places' names.
_NAME = re.compile(r"(?<=[a-z,;] )([A-Z][a-z]+)")


class NameCounts:
    """How often each capitalised word occurs mid-sentence: the story's people and places.

    Bounded: when it holds more than `cap` names, the rare ones are dropped (they cannot be
    the main characters), so a library of proper nouns cannot grow it without end.
    """

    def __init__(self, cap: int = 50_000) -> None:
        self.counts: Counter[str] = Counter()
        self.cap = cap

    def add(self, text: str) -> None:
        for m in _NAME.findall(text):
            self.counts[stem(m.lower())] += 1
        if len(self.counts) > self.cap:
            keep = self.counts.most_common(self.cap // 2)
            self.counts = Counter(dict(keep))

    def main(self, min_count: int = 3) -> set[str]:
        return {t for t, c in self.counts.items() if c >= min_count}


@dataclass
class DocumentIndex:
    """What streaming a document leaves behind besides the model state: the lexical statistics."""

    stats: DocumentStats = field(default_factory=DocumentStats)
    names: NameCounts = field(default_factory=NameCounts)

    def add(self, p: Passage) -> None:
        self.stats.add(p.terms)
        self.names.add(p.text)

    @property
    def n_sentences(self) -> int:
        return self.stats.n_sentences

    def to_json(self) -> dict:
        s = self.stats
        return {"df": dict(s.df), "tf": dict(s.tf), "n_sentences": s.n_sentences, "total_terms": s.total_terms,
                "names": dict(self.names.counts)}

    @classmethod
    def from_json(cls, d: dict) -> "DocumentIndex":
        st = DocumentStats()
        st.df, st.tf = Counter(d["df"]), Counter(d["tf"])
        st.n_sentences, st.total_terms = d["n_sentences"], d["total_terms"]
        idx = cls(st)
        idx.names.counts = Counter(d["names"])
        return idx


class SentenceFeed:
    """Turns the token chunks `read_document` streams into sentences with page and line.

    A chunk may span a page break (the tokenizer holds back the end of one page until the next
    arrives); it is cut where its tokens' page changes so every sentence gets its own page.
    """

    def __init__(self, on_passage: Callable[[Passage], None]) -> None:
        self._split = SentenceSplitter()
        self._on = on_passage

    def __call__(self, chunk: "TokenChunk") -> None:
        text = chunk.text
        if not text:
            return
        pieces: list[tuple[int, Optional[int]]] = [(0, chunk.page(0) if len(chunk) else None)]
        for i in range(1, len(chunk)):
            if chunk.pages[i] != chunk.pages[i - 1]:
                pieces.append((chunk.offsets[i] - chunk.char_offset, chunk.page(i)))
        line = chunk.line
        for k, (start, page) in enumerate(pieces):
            end = pieces[k + 1][0] if k + 1 < len(pieces) else len(text)
            piece = text[start:end]
            if piece:
                for s in self._split.feed(piece, chunk.char_offset + start, page, line):
                    self._on(Passage.from_sentence(s))
            line += piece.count("\n")

    def finish(self) -> None:
        for s in self._split.finish():
            self._on(Passage.from_sentence(s))


def passages_of_text(text: str, page: Optional[int] = None) -> list[Passage]:
    """All passages of a short text (tests, benchmarks); documents stream through SentenceFeed."""
    sp = SentenceSplitter()
    out = [Passage.from_sentence(s) for s in sp.feed(text, 0, page, 1)]
    out += [Passage.from_sentence(s) for s in sp.finish()]
    return out


# ----------------------------------------------------------------------------- ask: lexical score

_YEAR = re.compile(r"1\d{3}|20\d{2}")
_DIGIT = re.compile(r"\d")
_MONTHS = frozenset("january february march april may june july august september october november december".split())
# a capitalised word that does not start the sentence
_INNER_NAME = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+")


def answer_type(question: str) -> Optional[str]:
    """"time", "number", "person" or None, from the question's wording."""
    q = " ".join(words(question))
    if q.startswith(("when", "what year", "in what year", "what date")) or " year " in f" {q} " or "what century" in q:
        return "time"
    if "how many" in q or "how much" in q or "percentage" in q:
        return "number"
    if q.startswith(("who", "whom", "whose")):
        return "person"
    return None


def has_answer_type(kind: Optional[str], text: str) -> bool:
    if kind is None:
        return False
    ws = words(text)
    if kind == "time":
        return any(_YEAR.fullmatch(w) for w in ws) or bool(_MONTHS.intersection(ws))
    if kind == "number":
        return any(_DIGIT.search(w) for w in ws) or "million" in ws
    return bool(_INNER_NAME.search(text))


_IS_QUESTION = re.compile(r"\?[\"'”’)\]]*\s*$")
_DEFINITION_QUESTION = re.compile(r"^\s*(?:who|what)\s+(?:is|was|are|were)\s+(?:the\s+|a\s+|an\s+)?(.+?)\s*\??\s*$",
                                  re.IGNORECASE)
_DETERMINER = r"(?:a|an|the|one|my|our|his|her|their|its)"


def definition_pattern(question: str) -> Optional[re.Pattern]:
    """For "Who is X?" / "What was X?": a pattern matching sentences that define X
    (an appositive "X, the ..." or a copula "X is a ..."); None for other questions."""
    m = _DEFINITION_QUESTION.match(question)
    if not m:
        return None
    subject = m.group(1).strip(" \"'")
    if not subject or len(subject.split()) > 6:
        return None
    name = r"\s+".join(re.escape(w) for w in subject.split())
    copula = rf"(?:is|was|are|were)\s+{_DETERMINER}\b"
    return re.compile(rf"\b{name}\b(?:,\s*{_DETERMINER}\b|\s+{copula}|,\s*(?:who|which)\s+{copula})", re.IGNORECASE)


@dataclass
class AskWeights:
    bigram: float = 1.0  # per shared term bigram
    answer_type: float = 1.0  # bonus when the sentence has what the question asks for
    # a sentence that is itself a question ("What do you know of Professor Challenger?") echoes
    # the user's question rather than answering it: its score is multiplied by this
    question_sentence: float = 0.5
    # "Who is X?" / "What was X?": bonus for a sentence that defines X ("X, the famous
    # zoologist", "X was a ...") rather than merely names it
    definition: float = 2.0
    model: float = 0.0  # per nat of question_gain (see README: measured, kept only if it helps)
    rerank: int = 8  # how many of the lexical top candidates the model rescores


class QuestionScorer:
    """The lexical score of a sentence for one question, against the given statistics."""

    def __init__(self, question: str, weights: AskWeights = AskWeights()) -> None:
        self.question = question
        self.terms = terms(question)
        self.bigrams = set(zip(self.terms, self.terms[1:]))
        self.kind = answer_type(question)
        self.defines = definition_pattern(question)
        self.w = weights

    def score(self, p: Passage, stats: DocumentStats) -> float:
        s = stats.bm25(self.terms, p.terms)
        if self.bigrams:
            s += self.w.bigram * len(self.bigrams & set(zip(p.terms, p.terms[1:])))
        if self.kind is not None and s > 0:
            s += self.w.answer_type * has_answer_type(self.kind, p.text)
        if self.defines is not None and s > 0 and self.defines.search(p.text):
            s += self.w.definition
        if _IS_QUESTION.search(p.text):
            s *= self.w.question_sentence
        return s


class AskPool:
    """A fixed number of candidates for one question, whatever the document's length.

    Keeps the `size` best sentences by the score at the time they were seen (the statistics
    are those of the text read so far), plus a stratified sample (every k-th sentence, k
    doubling as the document grows) so that sentences scored with early statistics can still
    win when the final statistics rerank the pool.
    """

    def __init__(self, scorer: QuestionScorer, size: int = 256, sample: int = 64) -> None:
        self.scorer = scorer
        self.size, self.sample_size = size, sample
        self._heap: list[tuple[float, int, Passage]] = []
        self._sample: list[Passage] = []
        self._stride = 1

    def add(self, p: Passage, stats: DocumentStats) -> None:
        s = self.scorer.score(p, stats)
        if s > 0:
            item = (s, p.index, p)
            if len(self._heap) < self.size:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)
        if p.index % self._stride == 0:
            self._sample.append(p)
            if len(self._sample) > self.sample_size:
                self._stride *= 2
                self._sample = [q for q in self._sample if q.index % self._stride == 0]

    def __len__(self) -> int:
        return len(self._heap) + len(self._sample)

    def candidates(self) -> list[Passage]:
        seen: dict[int, Passage] = {p.index: p for _, _, p in self._heap}
        for p in self._sample:
            seen.setdefault(p.index, p)
        return list(seen.values())

    def ranked(self, stats: DocumentStats) -> list[Passage]:
        """The pool rescored with the final statistics, best first (ties: earlier first)."""
        out = []
        for p in self.candidates():
            q = Passage(p.text, p.index, p.char_offset, p.page, p.line, p.terms, self.scorer.score(p, stats))
            if q.score > 0:
                out.append(q)
        out.sort(key=lambda q: (-q.score, q.index))
        return out


# ----------------------------------------------------------------------------- ask: model score

def _batch_state(state: "StreamState", n: int) -> "StreamState":
    from ..memory import StreamState

    ex = lambda ts: [t.expand(n, *t.shape[1:]).contiguous() for t in ts]  # noqa: E731
    return StreamState(ex(state.M), ex(state.z), ex(state.k_local), ex(state.v_local),
                       state.tokens_seen, state.segments_written, dict(state.meta))


def continuation_logprobs(loaded: "LoadedModel", state: "StreamState", contexts: Sequence[list[int]],
                          target: list[int], use_memory: bool = True) -> list[float]:
    """Mean log-probability of `target` after each context, all continuing `state` in one batch.

    Rows are right-padded, so padding never reaches a real token (attention is causal); each
    row gets its own copy of the memory, so a row crossing a segment boundary writes only its
    own tokens.
    """
    import torch

    from ..stream import feed

    if not target:
        return [0.0] * len(contexts)
    pad = loaded.tokenizer.pad_id or 0
    seqs = [list(c) + list(target) for c in contexts]
    width = max(len(s) for s in seqs)
    toks = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = torch.tensor(s)
    logits, _ = feed(loaded.model, _batch_state(state, len(seqs)), toks, logits="all", use_memory=use_memory)
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    tgt = torch.tensor(target)
    for i, c in enumerate(contexts):
        start = len(c) - 1  # position whose output predicts the first target token
        if start < 0:
            out.append(float("nan"))
            continue
        rows = logp[i, start:start + len(target)]
        out.append(rows.gather(1, tgt.view(-1, 1).to(rows.device)).mean().item())
    return out


def question_gain(loaded: "LoadedModel", state: "StreamState", passages: Sequence[Passage], question: str,
                  max_passage_tokens: int = 96) -> list[float]:
    """Per passage: how much more likely the model finds the question after the passage.

    log p(question | document memory, passage) - log p(question | document memory, a neutral
    line), per question token; the question sits in the local window right after the passage.
    """
    tok = loaded.tokenizer
    q = tok.encode(" " + question.strip())
    contexts = [tok.encode(p.text)[-max_passage_tokens:] + tok.encode("\n") for p in passages]
    contexts.append(tok.encode("\n"))
    lp = continuation_logprobs(loaded, state, contexts, q)
    base = lp[-1]
    return [x - base for x in lp[:-1]]


def rank_for_question(pool: AskPool, stats: DocumentStats, top_k: int,
                      loaded: Optional["LoadedModel"] = None, state: Optional["StreamState"] = None) -> list[Passage]:
    """Final ranking: lexical over the pool, then the model reranks the best few (if weighted)."""
    ranked = pool.ranked(stats)
    w = pool.scorer.w
    if loaded is not None and state is not None and w.model and ranked:
        head = ranked[: max(w.rerank, top_k)]
        gains = question_gain(loaded, state, head, pool.scorer.question)
        for p, g in zip(head, gains):
            p.score += w.model * g
        head.sort(key=lambda q: (-q.score, q.index))
        ranked = head + ranked[len(head):]
    return ranked[:top_k]


# ----------------------------------------------------------------------------- summarize

_QUOTE = re.compile(r"[\"“”]")
_BOILERPLATE = re.compile(r"transcriber|gutenberg|e-?text|copyright|illustrated by|produced by|all rights reserved|"
                          r"^[^a-z]*$", re.IGNORECASE)
_SAID = re.compile(r"\b(said|asked|replied|answered|told)\b")
_PRONOUN_START = re.compile(r"(he|she|they|it|his|her)\b")

# Least squares on SQuALITY train+dev (75 stories, 'What is the plot of the story?'): target
# = each sentence's unigram + 2 x bigram precision against the four references. 5-fold
# cross-validation on train+dev: R1/R2/RL 35.9/7.5/16.4 against TextRank's 33.8/6.3/16.0.
SUMMARY_FEATURES = ("bias", "centrality", "position", "position^2", "log words", "quote", "main names",
                    "pronoun start", "first person", "question", "exclamation", "stop-word share",
                    "any main name", "capitalised share", "said", "-ed share", "digit")
SUMMARY_WEIGHTS = (0.2731, 0.3743, -0.1015, 0.0843, -0.0489, -0.0374, 0.1982, 0.0115, -0.1424, -0.0559, 0.0149,
                   0.6842, -0.0306, 0.2431, -0.0908, 0.141, -0.0181)
MIN_WORDS, MAX_WORDS = 5, 60


def summary_eligible(text: str) -> bool:
    n = len(text.split())
    return MIN_WORDS <= n <= MAX_WORDS and not _BOILERPLATE.search(text)


def centrality(p: Passage, stats: DocumentStats) -> float:
    """Sum of tf-idf of the sentence's distinct terms, damped by its length: how much of the
    document's vocabulary mass it touches."""
    n = max(1, stats.n_sentences)
    s = 0.0
    for t in set(p.terms):
        df = stats.df.get(t, 0)
        if df:
            s += stats.tf[t] * math.log(n / df)
    return s / (len(p.terms) ** 0.5 + 1)


def summary_features(p: Passage, cen: float, max_cen: float, n_sentences: int, main_names: set[str]) -> list[float]:
    text = p.text
    ws = text.split()
    nw = len(ws)
    wl = words(text)
    pos = p.index / max(1, n_sentences - 1)
    tset = set(p.terms)
    inter = len(tset & main_names)
    return [1.0, cen / max_cen if max_cen > 0 else 0.0, pos, pos * pos, math.log(nw + 1),
            float(bool(_QUOTE.search(text))),
            min(3, inter) / 3, float(bool(_PRONOUN_START.match(text.lower()))), float("i" in wl),
            float(text.rstrip().endswith("?")), float(text.rstrip().endswith("!")),
            sum(1 for x in wl if x in STOPWORDS) / max(1, len(wl)), float(inter > 0),
            sum(1 for x in ws[1:] if x[:1].isupper()) / max(1, nw), float(bool(_SAID.search(text.lower()))),
            sum(1 for x in wl if x.endswith("ed")) / max(1, len(wl)), float(bool(_DIGIT.search(text)))]


def summary_score(p: Passage, cen: float, max_cen: float, n_sentences: int, main_names: set[str],
                  weights: Sequence[float] = SUMMARY_WEIGHTS) -> float:
    f = summary_features(p, cen, max_cen, n_sentences, main_names)
    return sum(a * b for a, b in zip(f, weights))


class SummaryPool:
    """The best candidates per region of the document, a fixed number whatever its length.

    Regions start at `region` sentences; when there are more than `max_regions`, neighbours
    merge (keeping the best `per_region`) and regions double, so the pool covers the whole
    arc of the story in at most max_regions x per_region candidates. Candidates are ranked
    within a region by the summary score under the statistics read so far.
    """

    def __init__(self, per_region: int = 8, max_regions: int = 64, region: int = 8) -> None:
        self.per_region, self.max_regions, self.region = per_region, max_regions, region
        self._regions: list[list[tuple[float, int, Passage]]] = []
        self._cen_max = 1e-9
        self._fallback: list[Passage] = []  # the first sentences, for documents with no eligible one

    def add(self, p: Passage, index: DocumentIndex) -> None:
        if not summary_eligible(p.text):
            if len(self._fallback) < self.per_region and p.terms:
                self._fallback.append(p)
            return
        r = p.index // self.region
        while len(self._regions) <= r:
            self._regions.append([])
        stats = index.stats
        cen = centrality(p, stats)
        self._cen_max = max(self._cen_max, cen)
        s = summary_score(p, cen, self._cen_max, max(stats.n_sentences, p.index + 1), index.names.main())
        self._keep(self._regions[r], (s, -p.index, p))
        if len(self._regions) > self.max_regions:
            merged = []
            for i in range(0, len(self._regions), 2):
                both = self._regions[i] + (self._regions[i + 1] if i + 1 < len(self._regions) else [])
                merged.append(heapq.nlargest(self.per_region, both))
            self._regions = merged
            self.region *= 2

    def _keep(self, heap: list, item: tuple) -> None:
        if len(heap) < self.per_region:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def candidates(self) -> list[Passage]:
        return [p for reg in self._regions for _, _, p in reg] or list(self._fallback)

    def __len__(self) -> int:
        return sum(len(r) for r in self._regions) or len(self._fallback)


@dataclass
class Budget:
    words: Optional[int] = 200
    sentences: Optional[int] = None


def select_summary(candidates: Sequence[Passage], index: DocumentIndex, budget: Budget, redundancy: float = 0.15,
                   extra: Optional[dict[int, float]] = None) -> list[Passage]:
    """Greedy selection by score minus redundancy with what is already chosen, in document order."""
    stats = index.stats
    n = max(1, stats.n_sentences)
    main = index.names.main()
    cens = [centrality(p, stats) for p in candidates]
    max_cen = max(cens, default=0.0)
    scored = []
    for p, c in zip(candidates, cens):
        s = summary_score(p, c, max_cen, n, main) + (extra or {}).get(p.index, 0.0)
        scored.append(Passage(p.text, p.index, p.char_offset, p.page, p.line, p.terms, s))
    sets = [set(p.terms) for p in scored]
    chosen: list[int] = []
    total = 0
    left = set(range(len(scored)))
    while left:
        if budget.sentences is not None and len(chosen) >= budget.sentences:
            break
        if budget.sentences is None and budget.words is not None and total >= budget.words:
            break

        def value(i: int) -> float:
            red = max((len(sets[i] & sets[j]) / (len(sets[i]) or 1) for j in chosen), default=0.0)
            return scored[i].score - redundancy * red

        best = max(left, key=lambda i: (value(i), -scored[i].index))
        chosen.append(best)
        left.discard(best)
        total += len(scored[best].text.split())
    return sorted((scored[i] for i in chosen), key=lambda p: p.index)


def fit_budget(chosen: Sequence[Passage], budget: Budget) -> tuple[str, list[Passage]]:
    """The chosen sentences joined and the ones that appear in it; with a word budget, cut to
    exactly that many words (the last sentence shown may end in "…")."""
    if budget.sentences is not None or budget.words is None:
        return " ".join(p.text for p in chosen), list(chosen)
    shown: list[Passage] = []
    out: list[str] = []
    for p in chosen:
        room = budget.words - len(out)
        if room <= 0:
            break
        ws = p.text.split()
        out.extend(ws[:room])
        shown.append(p)
        if len(ws) > room:
            return " ".join(out) + " …", shown
    return " ".join(out), shown


def summary_text(chosen: Sequence[Passage], budget: Budget) -> str:
    return fit_budget(chosen, budget)[0]


def memory_gain(loaded: "LoadedModel", state: "StreamState", passages: Sequence[Passage],
                max_tokens: int = 48, batch: int = 64) -> list[float]:
    """Per passage: mean log-likelihood of its tokens with the document's memory minus without.

    A sentence that the memory of the whole document helps to predict is about what the
    document keeps coming back to. The sentence starts a fresh local window in both cases.
    """
    import torch

    from ..memory import StreamState
    from ..stream import feed

    tok = loaded.tokenizer
    cfg = loaded.config
    with_mem = StreamState(state.M, state.z, [t[:, :, :0] for t in state.k_local], [t[:, :, :0] for t in state.v_local],
                           state.tokens_seen, state.segments_written)
    empty = StreamState.empty(cfg, 1, loaded.device, loaded.dtype)
    out: list[float] = []
    ids = [tok.encode(p.text)[: min(max_tokens, cfg.segment_len)] for p in passages]
    pad = tok.pad_id or 0
    for b in range(0, len(ids), batch):
        chunk = ids[b:b + batch]
        width = max(2, max(len(x) for x in chunk))
        toks = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, x in enumerate(chunk):
            toks[i, :len(x)] = torch.tensor(x)
        res = []
        for st in (with_mem, empty):
            logits, _ = feed(loaded.model, _batch_state(st, len(chunk)), toks.to(loaded.device), logits="all")
            lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(2, toks[:, 1:].unsqueeze(-1).to(logits.device))
            res.append(lp.squeeze(-1).cpu())
        for i, x in enumerate(chunk):
            n = len(x) - 1
            out.append(float((res[0][i, :n] - res[1][i, :n]).mean()) if n > 0 else 0.0)
    return out

