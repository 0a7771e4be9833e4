"""The passkey prompt of Landmark Attention (Mohtashami & Jaggi, 2023), word for word.

    <task line>\n<haystack before>\n<key line>\n<haystack after>\n<question>

Prompts of any length are produced as a stream of token chunks: the haystack is a cycle of
sentences tokenized once, so a 10M-token prompt costs no more memory than a 1K one. Each
haystack sentence is tokenized with its leading space; byte-level BPE splits before a space
and around newlines, so the chunks concatenate to exactly the ids of the whole text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..tokenizer import TextTokenizer

TASK = ("There is an important info hidden inside a lot of irrelevant text. "
        "Find it and memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "What is the pass key? The pass key is"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences with whitespace collapsed; a haystack is a cycle of these."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if s]


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


class Haystack:
    """A cycle of tokenized sentences with prefix sums, so lengths are computed, not built."""

    def __init__(self, tokenizer: TextTokenizer, sentences: Sequence[str], name: str) -> None:
        if not sentences:
            raise ValueError(f"haystack {name} has no sentences")
        self.name = name
        self.sentences = [tokenizer.encode(" " + s) for s in sentences]
        self.prefix = [0, *accumulate(len(s) for s in self.sentences)]
        self.cycle_tokens = self.prefix[-1]
        if self.cycle_tokens == 0:
            raise ValueError(f"haystack {name} has no text")

    @classmethod
    def standard(cls, tokenizer: TextTokenizer) -> "Haystack":
        return cls(tokenizer, split_sentences(FILLER), "standard filler")

    @classmethod
    def from_text(cls, tokenizer: TextTokenizer, text: str, name: str, max_sentences: int = 20000) -> "Haystack":
        return cls(tokenizer, split_sentences(text)[:max_sentences], name)

    @classmethod
    def from_file(cls, tokenizer: TextTokenizer, path: Path) -> "Haystack":
        return cls.from_text(tokenizer, path.read_text(encoding="utf-8", errors="replace"), str(path))

    def tokens_in(self, start: int, n: int) -> int:
        """Tokens in n sentences starting at sentence index start of the cycle."""
        m = len(self.sentences)
        def upto(i: int) -> int:
            return (i // m) * self.cycle_tokens + self.prefix[i % m]
        return upto(start + n) - upto(start)

    def sentences_within(self, budget: int) -> int:
        """Largest n with tokens_in(0, n) <= budget."""
        full, rest = divmod(budget, self.cycle_tokens)
        n = full * len(self.sentences)
        # prefix is sorted: count sentences of the next cycle that still fit
        lo = 0
        while lo + 1 < len(self.prefix) and self.prefix[lo + 1] <= rest:
            lo += 1
        return n + lo

    def iter_chunks(self, start: int, n: int) -> Iterator[list[int]]:
        m = len(self.sentences)
        for i in range(start, start + n):
            yield self.sentences[i % m]


@dataclass(frozen=True)
class PromptPlan:
    """Where everything sits in a prompt of a given length; the key itself is not fixed."""

    total_tokens: int
    key_start: int          # token index of the key line's first token
    key_len: int            # tokens of the key line
    question_start: int     # token index of the question's first token
    before_sentences: int
    after_sentences: int
    depth: float            # the depth actually reached (sentence boundary)


class PasskeyPromptBuilder:
    def __init__(self, tokenizer: TextTokenizer, haystack: Haystack) -> None:
        self.tok = tokenizer
        self.haystack = haystack
        self.task_ids = tokenizer.encode(TASK)
        self.nl_ids = tokenizer.encode("\n")
        self.question_ids = tokenizer.encode(QUESTION)
        # every 5-digit key tokenizes to the same length (one token per digit)
        self.key_len = len(self.key_ids("12345"))

    def key_ids(self, key: str) -> list[int]:
        return self.tok.encode(KEY_LINE.format(k=key))

    def overhead(self) -> int:
        return len(self.task_ids) + 4 * len(self.nl_ids) + self.key_len + len(self.question_ids)

    def plan(self, n_tokens: int, depth: float) -> PromptPlan:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be within 0 and 1, not {depth}")
        budget = max(0, n_tokens - self.overhead())
        n = self.haystack.sentences_within(budget)
        # one more sentence if that lands nearer the target
        if self.haystack.tokens_in(0, n + 1) - budget < budget - self.haystack.tokens_in(0, n):
            n += 1
        before = round(depth * n)
        after = n - before
        nl = len(self.nl_ids)
        key_start = len(self.task_ids) + nl + self.haystack.tokens_in(0, before) + nl
        question_start = key_start + self.key_len + nl + self.haystack.tokens_in(before, after) + nl
        return PromptPlan(
            total_tokens=question_start + len(self.question_ids),
            key_start=key_start,
            key_len=self.key_len,
            question_start=question_start,
            before_sentences=before,
            after_sentences=after,
            depth=before / n if n else 0.0,
        )

    def iter_tokens(self, plan: PromptPlan, key: str) -> Iterator[list[int]]:
        """The prompt as token chunks, in order, never all at once."""
        yield self.task_ids
        yield self.nl_ids
        yield from self.haystack.iter_chunks(0, plan.before_sentences)
        yield self.nl_ids
        yield self.key_ids(key)
        yield self.nl_ids
        yield from self.haystack.iter_chunks(plan.before_sentences, plan.after_sentences)
        yield self.nl_ids
        yield self.question_ids

    def build(self, plan: PromptPlan, key: str) -> list[int]:
        return [t for chunk in self.iter_tokens(plan, key) for t in chunk]

    def text(self, plan: PromptPlan, key: str) -> str:
        """The whole prompt as text (for tests and short prompts)."""
        return self.tok.decode(self.build(plan, key))


def first_integer(text: str) -> Optional[str]:
    """InfiniteBench's scoring rule: the first run of digits in the answer."""
    m = re.search(r"\d+", text)
    return m.group(0) if m else None
