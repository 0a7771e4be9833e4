"""Summarize's sentence choice: a linear score over per-sentence features, then a greedy,
redundancy-aware selection up to the budget.

Features: centrality against the document's tf-idf centroid, main characters' names,
position, dialogue, first person ...; weights fitted by least squares on SQuALITY train+dev
against each sentence's overlap with the reference summaries. The model's likelihood gain
with the document memory did not help on SQuALITY dev; it lives in the benchmark that
measured it (benchmarks/model_scores.py).
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .lexical import STOPWORDS, DocumentStats, words
from .passages import DocumentIndex, Passage, keep_best


_DIGIT = re.compile(r"\d")
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
        keep_best(self._regions[r], (s, -p.index, p), self.per_region)
        if len(self._regions) > self.max_regions:
            merged = []
            for i in range(0, len(self._regions), 2):
                both = self._regions[i] + (self._regions[i + 1] if i + 1 < len(self._regions) else [])
                merged.append(heapq.nlargest(self.per_region, both))
            self._regions = merged
            self.region *= 2

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
