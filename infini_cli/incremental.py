"""Incremental tokenization: a stream of text in, exactly the whole text's token ids out.

Byte-level BPE never merges across pre-tokens, so the ids of a text equal the ids of its
two halves whenever the cut falls on a pre-token boundary that both halves agree on. The
encoder keeps a buffer, cuts it at the last such boundary, encodes what lies before and
holds back only the tail after it (usually a part of one word).

Why the main cut rule is exact. The pre-tokenizer is Digits(individual) then the GPT-2
regex `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
Cut at p where text[p] is whitespace and text[p-1] is not:
- no match can hold both text[p-1] (not whitespace) and text[p] (whitespace): only the
  whitespace alternatives take whitespace, and they take nothing else; an optional leading
  space belongs to the *start* of a match. So p is a boundary of the whole text.
- the regex looks ahead only (`(?!\\S)`), never behind, so the part after p is scanned
  exactly as in the whole text; the part before p too, because the only lookahead is
  at the end of a whitespace run, and the run before p ends before p-1.
- Digits splits each digit off on its own, which no cut can change.
(A cut *after* whitespace is not safe: "a\\n\\nb" gives "\\n", "\\n", "b", but "a\\n\\n" alone gives
"\\n\\n". A newline-only rule would be wrong for the same reason.)
"Not whitespace" uses Python's str.isspace(), a superset of the regex's \\s (checked for every
code point: they differ only on U+001C..U+001F, which Python alone calls whitespace), so the
rule only ever declines cuts, never makes a wrong one.

Text without whitespace (Chinese, Japanese, Thai, a base64 blob) has no such cut. When the
held tail grows past `max_hold` characters, the encoder looks for a boundary between a
letter and a punctuation mark or digit (again a pre-token boundary by the same argument,
apostrophe-contractions excepted), and accepts one only after checking it against the
tokenizer itself on a window around the cut, with the window's text after the cut already
in the buffer (a contraction "'ll" needs the characters after "'" to be seen). Only text
with no such boundary in `max_hold` characters (one endless "word") is cut blindly; those
cuts are counted in `inexact_cuts` and reported, because there the ids may differ from a
whole-text encode near the cut.

Tokenizers with a normalizer that depends on position (SentencePiece's prepended "▁") or a
pre-tokenizer of another kind are probed once at start: if a whitespace cut changes their
ids, `exact` is False and a warning says so.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Protocol

if TYPE_CHECKING:
    from .tokenizer import TextTokenizer

DEFAULT_MAX_HOLD = 1 << 14  # characters held back at most when a text has no whitespace
_WINDOW = 32  # characters each side of a forced cut checked against the tokenizer
_MAX_FORCED_TRIES = 64

# What the tokenizers' regex engine (Oniguruma) calls \s: Unicode White_Space.
_REGEX_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A cut before whitespace that follows a non-whitespace character (Python's \S is stricter).
_WS_CUT = re.compile(rf"(?<=\S)(?=[{_REGEX_SPACE}])")
# Candidates for forced cuts in text without whitespace: letter <-> other, digit <-> other.
_CLASS_CHANGE = re.compile(r"(?<=\w)(?=[^\w\s])|(?<=[^\w\s])(?=\w)|(?<=\d)(?=[^\d\s])|(?<=[^\d\s])(?=\d)")

_PROBES = (
    "Hello world, it's 2024!\n\n  Indented   line\tend. Done",
    "Une phrase française — avec des accents, n'est-ce pas ? Oui.",
    "x  y\r\n\r\nz 123 456\u3000全角 space",
)


class TextPiece(Protocol):
    text: str
    page: Optional[int]
    char_offset: int
    line: int


@dataclass
class TokenChunk:
    """Token ids and, per token, where its first character sits in the document."""

    ids: list[int]
    offsets: array  # array('q'): document character offset of each token's first character
    pages: array  # array('i'): 1-based page of each token; 0 where the document has no pages
    text: str  # the document text these tokens encode
    char_offset: int  # document offset of text[0]
    line: int  # 1-based line of text[0]

    def __len__(self) -> int:
        return len(self.ids)

    def page(self, i: int) -> Optional[int]:
        return self.pages[i] or None


class IncrementalEncoder:
    """Feed text in pieces of any size; get TokenChunks whose ids concatenate to the whole's."""

    def __init__(self, tokenizer: "TextTokenizer", max_hold: int = DEFAULT_MAX_HOLD) -> None:
        if max_hold < 1:
            raise ValueError("max_hold must be positive")
        self._tok = tokenizer.backend
        self.max_hold = max_hold
        self._buf = ""
        self._start = 0  # document offset of _buf[0]
        self._line = 1
        self._marks: list[tuple[int, int]] = []  # (document offset, page) where a page starts
        self._started = False
        self.inexact_cuts = 0
        self.tokens = 0
        self.chars = 0
        # Added tokens (<|endoftext|> ...) are matched before pre-tokenizing: never cut inside one.
        self._added = [t.content for t in self._tok.get_added_tokens_decoder().values() if len(t.content) > 1]
        self.exact = self._probe()

    # ------------------------------------------------------------------ public

    def encode_stream(self, chunks: Iterable[TextPiece]) -> Iterator[TokenChunk]:
        for c in chunks:
            out = self.feed(c.text, c.page, c.char_offset, c.line)
            if out is not None:
                yield out
        out = self.finish()
        if out is not None:
            yield out

    def feed(self, text: str, page: Optional[int] = None, char_offset: Optional[int] = None,
             line: Optional[int] = None) -> Optional[TokenChunk]:
        """Add text (contiguous with what came before); returns the tokens now certain, if any."""
        if not self._started:
            self._started = True
            self._start = char_offset or 0
            self._line = line or 1
        elif char_offset is not None and char_offset != self._start + len(self._buf):
            raise ValueError(f"chunks must be contiguous: expected offset {self._start + len(self._buf)}, "
                             f"got {char_offset}")
        if not text:
            return None
        page = page or 0
        if not self._marks or self._marks[-1][1] != page:
            self._marks.append((self._start + len(self._buf), page))
        self._buf += text
        cut = self._find_cut()
        return self._emit(cut) if cut > 0 else None

    def finish(self) -> Optional[TokenChunk]:
        """Encode whatever is held back (the end of the text is a boundary of every split)."""
        return self._emit(len(self._buf)) if self._buf else None

    @property
    def warnings(self) -> list[str]:
        out = []
        if not self.exact:
            out.append("this tokenizer cannot be cut exactly at word boundaries (it has a position-dependent "
                       "normalizer or pre-tokenizer); ids near block joins may differ from a whole-text encode")
        if self.inexact_cuts:
            out.append(f"{self.inexact_cuts} cut(s) in text with no word or punctuation break for "
                       f"{self.max_hold:,} characters; ids next to them may differ from a whole-text encode")
        return out

    # ------------------------------------------------------------------ cutting

    def _find_cut(self) -> int:
        buf = self._buf
        p = self._last_ws_cut(buf)
        if len(buf) - p > self.max_hold:
            q = self._forced_cut(buf, p)
            if q:
                p = q
            else:  # one endless "word": a cut anywhere may change the ids next to it
                p = len(buf)
                self.inexact_cuts += 1
        return p

    def _last_ws_cut(self, buf: str) -> int:
        n = len(buf)
        span = 256
        while True:
            lo = max(1, n - span)
            cuts = [m.start() for m in _WS_CUT.finditer(buf, lo)]
            for p in reversed(cuts):
                if not self._inside_added(buf, p):
                    return p
            if lo == 1:
                return 0
            span *= 16

    def _forced_cut(self, buf: str, lo: int) -> int:
        # Only cuts with a full window of known text after them: what follows a cut can
        # matter ("'" + "ll" is one pre-token, "'" + "l" two), and it must be checked, not guessed.
        cuts = [m.start() for m in _CLASS_CHANGE.finditer(buf, lo + 1, len(buf) - _WINDOW + 1)]
        for p in reversed(cuts[-_MAX_FORCED_TRIES:]):
            if not self._inside_added(buf, p) and self._splits_cleanly(buf, p):
                return p
        return 0

    def _splits_cleanly(self, buf: str, p: int) -> bool:
        """Check a candidate cut with the tokenizer itself, on a window around it."""
        a, b = max(0, p - _WINDOW), min(len(buf), p + _WINDOW)
        left, right, both = buf[a:p], buf[p:b], buf[a:b]
        pre = self._tok.pre_tokenizer
        if pre is not None:
            cut = p - a
            whole = pre.pre_tokenize_str(both)
            if cut not in {s for _, (s, _) in whole}:
                return False
            halves = pre.pre_tokenize_str(left) + [(t, (s + cut, e + cut)) for t, (s, e) in pre.pre_tokenize_str(right)]
            if halves != whole:
                return False
        return self._encode(left).ids + self._encode(right).ids == self._encode(both).ids

    def _inside_added(self, buf: str, p: int) -> bool:
        """True if an added token does, or may once more text arrives, span position p."""
        n, pair = len(buf), buf[p - 1:p + 1]
        for tok in self._added:
            if pair not in tok:  # a token across p holds both characters next to each other
                continue
            k = len(tok)
            for s in range(max(0, p - k + 1), p):
                if buf.startswith(tok[:n - s], s):  # whole token, or the start of one at the end
                    return True
        return False

    def _probe(self) -> bool:
        for s in _PROBES:
            whole = self._encode(s).ids
            for m in _WS_CUT.finditer(s, 1):
                p = m.start()
                if self._encode(s[:p]).ids + self._encode(s[p:]).ids != whole:
                    return False
        return True

    # ------------------------------------------------------------------ emitting

    def _encode(self, text: str):
        return self._tok.encode(text, add_special_tokens=False)

    def _emit(self, cut: int) -> TokenChunk:
        piece, start = self._buf[:cut], self._start
        enc = self._encode(piece)
        ids = enc.ids
        offsets = array("q", [start + s for s, _ in enc.offsets])
        pages = self._pages_for(offsets, start + cut)
        chunk = TokenChunk(ids, offsets, pages, piece, start, self._line)
        self._buf = self._buf[cut:]
        self._start = start + cut
        self._line += piece.count("\n")
        self.tokens += len(ids)
        self.chars += cut
        return chunk

    def _pages_for(self, offsets: array, end: int) -> array:
        marks = self._marks
        # Keep only the mark in force at `end` and those after it for the next chunk.
        if len(marks) == 1 or marks[1][0] > (offsets[-1] if offsets else end):
            pages = array("i", [marks[0][1]]) * len(offsets)
        else:
            pages = array("i", bytes(4 * len(offsets)))
            m = 0
            for i, off in enumerate(offsets):
                while m + 1 < len(marks) and marks[m + 1][0] <= off:
                    m += 1
                pages[i] = marks[m][1]
        while len(marks) > 1 and marks[1][0] <= end:
            marks.pop(0)
        return pages
