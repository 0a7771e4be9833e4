"""An answer that restates its question before answering it, cut to the answer.

Asked for a short phrase, the 135M writer often answers with a clause that repeats the
question first: "What kind of economy does Victoria have?" -> "The economy of Victoria is
highly diversified". The restatement is a prefix of the answer made only of the question's
own words and stop words, holding at least one of the question's content words and a verb
("is", "was", "would", ...): a clause, not a noun phrase that starts with a question word
("The Department for Culture, Media and Sport" stays whole). The answer keeps what follows it
("highly diversified"). Works on a stream as well: the writer's text is held back only until
its first word that the question does not hold. An answer made of nothing but the question's
words ("Yuan" to "What dynasty came before the Yuan?") echoes it (echoes_question): ask holds
it back and asks again.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from .lexical import STOPWORDS, stem, terms
from .writer import NOT_IN_DOCUMENT

# a word with what joins it inside, so that "10.1", "News-Record", "Luther's" stay one word
_JOINS = ".,'’-"
_WORD = re.compile(rf"\w+(?:[{_JOINS}]\w+)*")
_PARTS = re.compile(rf"[{_JOINS}]")
_VERBS = frozenset("is was are were be been being has have had do does did would will could can".split())


def _parts(word: str) -> list[str]:
    return [p for p in _PARTS.split(re.sub(r"['’]s$", "", word.lower())) if p]


def restatement_end(answer: str, question: str, complete: bool = True) -> Optional[int]:
    """Where the answer proper starts: after the restatement of the question, 0 when there is
    none. With complete=False (a stream) None while the text so far cannot tell yet."""
    said = answer.strip()
    if said.startswith(NOT_IN_DOCUMENT):  # never cut, whatever the question's words
        return 0
    if NOT_IN_DOCUMENT.startswith(said):
        return 0 if complete else None
    asked = set(terms(question))
    saw_question_word = saw_verb = False
    for m in _WORD.finditer(answer):
        if not complete and not answer[m.end():].strip(_JOINS):
            return None  # the word may go on in the next piece ("10." may become "10.1")
        parts = _parts(m.group(0))
        if not _restating(parts, asked):
            return m.start() if saw_question_word and saw_verb else 0
        saw_verb |= m.group(0).lower() in _VERBS
        saw_question_word |= any(p not in STOPWORDS for p in parts)
    return 0 if complete else None  # nothing but the question's words: kept whole


def _restating(parts: list[str], asked: set[str]) -> bool:
    """A word (its parts, _parts) that only repeats the question: a stop word or a question's term."""
    return all(p in STOPWORDS or stem(p) in asked for p in parts)


def echoes_question(answer: str, question: str) -> bool:
    """The answer is nothing but the question's own words and stop words ("Yuan" to "What
    dynasty came before the Yuan?"): it says nothing, unless the question offers a choice
    ("Which is more costly, formal or informal imperialism?")."""
    said = [m.group(0) for m in _WORD.finditer(answer)]
    if not said or answer.strip().startswith(NOT_IN_DOCUMENT) or re.search(r"\bor\b", question, re.IGNORECASE):
        return False
    asked = set(terms(question))
    return all(_restating(_parts(w), asked) for w in said)


def drop_restatement(answer: str, question: str) -> str:
    """The answer without a leading restatement of the question."""
    return answer[restatement_end(answer, question):].strip()


class RestatementFilter:
    """Streams an answer with its restatement dropped: pieces are held back until the text
    shows where the answer proper starts, then passed on as they come; finish() sends what
    is still held when the answer ended first."""

    def __init__(self, question: str, on_text: Optional[Callable[[str], None]]) -> None:
        self.question = question
        self.on_text = on_text
        self.held = ""
        self.started: Optional[int] = None

    def __call__(self, piece: str) -> None:
        if self.started is not None:
            self._send(piece)
            return
        self.held += piece
        self.started = restatement_end(self.held, self.question, complete=False)
        if self.started is not None:
            self._send(self.held[self.started:])

    def finish(self) -> None:
        if self.started is None:
            self.started = restatement_end(self.held, self.question)
            self._send(self.held[self.started:].strip())

    def _send(self, text: str) -> None:
        if self.on_text is not None and text:
            self.on_text(text)
