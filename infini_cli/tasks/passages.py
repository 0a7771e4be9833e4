"""The document as sentences with provenance, as the text streams by, and its statistics.

Bounded whatever the document's length: the splitter holds one unfinished sentence, the
statistics grow with the vocabulary (names with a cap). Ask and summarize score these
passages (ask_scoring.py, summary_scoring.py); the cache stores them as records.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from .lexical import DocumentStats, stem, terms
from .sentences import Sentence, SentenceSplitter

if TYPE_CHECKING:
    from ..incremental import TokenChunk


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


def keep_best(heap: list, item: tuple, size: int) -> None:
    """Push item onto a min-heap that keeps only the `size` largest items (the bounded pools)."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def passages_of_text(text: str, page: Optional[int] = None) -> list[Passage]:
    """All passages of a short text (tests, benchmarks); documents stream through SentenceFeed."""
    sp = SentenceSplitter()
    out = [Passage.from_sentence(s) for s in sp.feed(text, 0, page, 1)]
    out += [Passage.from_sentence(s) for s in sp.finish()]
    return out
