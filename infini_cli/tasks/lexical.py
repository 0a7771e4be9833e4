"""Words, stems and BM25 statistics gathered in one streaming pass."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves also may might must shall upon us one s t
""".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def stem(word: str) -> str:
    """A light English suffix stripper: enough to match 'decided' with 'decide' or 'years' with 'year'."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""), ("ly", ""),
                         ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: len(word) - len(suffix)] + repl
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Content terms: lower-cased, stop words dropped, stemmed."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]


class DocumentStats:
    """Document frequencies over sentences, accumulated as the text streams by.

    Memory grows with the document's vocabulary, not its length (a few MB for a library).
    """

    def __init__(self) -> None:
        self.df: Counter[str] = Counter()
        self.tf: Counter[str] = Counter()
        self.n_sentences = 0
        self.total_terms = 0

    def add(self, sentence_terms: Iterable[str]) -> None:
        ts = list(sentence_terms)
        self.n_sentences += 1
        self.total_terms += len(ts)
        self.df.update(set(ts))
        self.tf.update(ts)

    @property
    def avg_len(self) -> float:
        return self.total_terms / self.n_sentences if self.n_sentences else 1.0

    def idf(self, term: str) -> float:
        n, df = self.n_sentences, self.df.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def bm25(self, query: list[str], sentence_terms: list[str], k1: float = 1.2, b: float = 0.75) -> float:
        if not sentence_terms:
            return 0.0
        tf = Counter(sentence_terms)
        norm = k1 * (1 - b + b * len(sentence_terms) / self.avg_len)
        score = 0.0
        for q in set(query):
            f = tf.get(q, 0)
            if f:
                score += self.idf(q) * f * (k1 + 1) / (f + norm)
        return score
