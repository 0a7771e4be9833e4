"""Incremental sentence splitting with provenance (page, line, character offset).

Text arrives in chunks of any size; complete sentences are emitted as soon as the next one
starts, and only the unfinished tail is held back (capped, so text without punctuation
cannot grow it without bound).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Optional

MAX_SENTENCE_CHARS = 1000

# a boundary: end punctuation (optionally closed by a quote or bracket) then whitespace and an
# opening capital, digit, quote or bracket; or a blank line (paragraph break)
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*(?P<ws>\s+)(?=[\"'“‘(\[]?[A-Z0-9À-Ý])|(?P<para>\n\s*\n)")
# a page that ends like this ends mid-sentence: a comma, a hyphen, or a word in lower case
# (a heading such as "Chapter Two" ends with a capitalised word and stays a passage)
_ENDS_MID_SENTENCE = re.compile(r"(?:[,\-–—]|\b[a-z][a-z']*)\s*$")
_STARTS_LOWER = re.compile(r"\s*[a-z]")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "capt", "lt", "sgt", "rev",
                  "vs", "etc", "no", "vol", "fig", "u.s", "e.g", "i.e", "mt", "ft", "ave", "co", "inc", "ltd"}


@dataclass
class Sentence:
    text: str
    index: int              # sentence number in the document, from 0
    char_offset: int        # offset of its first character in the document's text
    page: Optional[int]     # 1-based page for PDFs, None for text
    line: int               # 1-based line of its first character


def _is_abbreviation(before: str) -> bool:
    word = re.search(r"([A-Za-z.]+)\.$", before)
    if not word:
        return False
    w = word.group(1).lower()
    return w in _ABBREVIATIONS or (len(w) == 1 and w.isalpha())


class SentenceSplitter:
    """Feed (text, char_offset, page, line) chunks; iterate complete sentences."""

    def __init__(self) -> None:
        self._buf = ""
        self._buf_offset = 0
        self._buf_line = 1
        self._pages: list[tuple[int, Optional[int]]] = []  # (offset where a page starts, page)
        self._index = 0

    def _page_at(self, offset: int) -> Optional[int]:
        page = None
        for start, p in self._pages:
            if start <= offset:
                page = p
            else:
                break
        return page

    def feed(self, text: str, char_offset: int, page: Optional[int] = None, line: Optional[int] = None) -> Iterator[Sentence]:
        if not self._buf:
            self._buf_offset = char_offset
            if line is not None:
                self._buf_line = line
        if not self._pages or self._pages[-1][1] != page:
            self._pages.append((char_offset, page))
        self._buf += text
        yield from self._emit(final=False)

    def finish(self) -> Iterator[Sentence]:
        yield from self._emit(final=True)

    def _emit(self, final: bool) -> Iterator[Sentence]:
        start = 0
        buf = self._buf
        for m in _BOUNDARY.finditer(buf):
            end = m.start("ws") if m.group("ws") is not None else m.start("para")
            if m.group("para") is None and _is_abbreviation(buf[start:m.start()]):
                continue
            if m.group("para") is not None and m.end() == len(buf) and not final:
                break  # what follows a blank line decides whether it ends the sentence: wait for it
            if m.group("para") is not None and self._continues_over_page(buf, start, m.start(), m.end()):
                continue
            yield from self._make(buf[start:end], start)
            start = m.end()
        # cap the unfinished tail: cut at the last space within the cap
        while len(buf) - start > MAX_SENTENCE_CHARS:
            cut = buf.rfind(" ", start, start + MAX_SENTENCE_CHARS)
            cut = cut if cut > start else start + MAX_SENTENCE_CHARS
            yield from self._make(buf[start:cut], start)
            start = cut
        if final:
            yield from self._make(buf[start:], start)
            start = len(buf)
        # keep only the tail, with the bookkeeping of where it starts
        self._buf_line += buf.count("\n", 0, start)
        self._buf_offset += start
        self._buf = buf[start:]
        keep = [(s, p) for s, p in self._pages if s > self._buf_offset]
        self._pages = [(self._buf_offset, self._page_at(self._buf_offset))] + keep

    def _continues_over_page(self, buf: str, start: int, gap_start: int, gap_end: int) -> bool:
        """A blank line at a page break, after text that does not end a sentence: the page
        broke a sentence ("...had inherited Temple Barholm, it" / "is for any one..."), which
        goes on over the break (with the page it started on)."""
        lo, hi = self._buf_offset + gap_start, self._buf_offset + gap_end
        if not any(lo <= s <= hi and p is not None for s, p in self._pages[1:]):
            return False
        return bool(_ENDS_MID_SENTENCE.search(buf[start:gap_start]) or _STARTS_LOWER.match(buf, gap_end))

    def _make(self, raw: str, rel: int) -> Iterator[Sentence]:
        text = " ".join(raw.split())
        if not text:
            return
        lead = len(raw) - len(raw.lstrip())
        offset = self._buf_offset + rel + lead
        line = self._buf_line + self._buf.count("\n", 0, rel + lead)
        s = Sentence(text, self._index, offset, self._page_at(offset), line)
        self._index += 1
        yield s
