"""`infini summarize`: an extractive summary whose every sentence says where it is.

The document streams once (or comes from the cache); a pool keeps the best candidates of each
region of the document, so the summary can cover the whole arc of a 600-page book from a
bounded set. The final selection scores the pool with the whole document's statistics and
picks sentences greedily, avoiding repeats, up to the word (or sentence) budget, then prints
them in document order. With a checkpoint that can write (`"generates_answers": true`), the
model writes a summary from the document memory with the chosen sentences in its window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from rich.console import Console

from ..checkpoint import LoadedModel
from ..errors import InputError
from ..memory import StreamState
from ..readers import Document
from .ask import EXTRACTIVE, GENERATED
from .evidence import Budget, DocumentIndex, Passage, SummaryPool, fit_budget, memory_gain, select_summary
from .reading import RunFacts, generates_answers, read_or_load

# Weight of the model's memory gain (nats per token) added to the sentence score; measured on
# SQuALITY dev (README, "Quality"), 0 = not used.
MODEL_WEIGHT = 0.0


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
    facts: RunFacts
    budget: Budget
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"summary": self.summary, "mode": self.mode, "evidence": [p.evidence() for p in self.evidence],
                "words": len(self.summary.replace(" …", "").split()),
                "budget": {"words": self.budget.words, "sentences": self.budget.sentences},
                **self.facts.as_dict(), "warnings": self.warnings}


def choose(pool: SummaryPool, index: DocumentIndex, budget: Budget, loaded: Optional[LoadedModel] = None,
           state: Optional[StreamState] = None, model_weight: float = MODEL_WEIGHT) -> list[Passage]:
    candidates = pool.candidates()
    extra = None
    if model_weight and loaded is not None and state is not None and candidates:
        gains = memory_gain(loaded, state, candidates)
        extra = {p.index: model_weight * g for p, g in zip(candidates, gains)}
    return select_summary(candidates, index, budget, extra=extra)


def summarize_passages(passages, index: DocumentIndex, budget: Budget, loaded: Optional[LoadedModel] = None,
                       state: Optional[StreamState] = None, model_weight: float = MODEL_WEIGHT) -> list[Passage]:
    """Summary sentences of an iterable of passages with complete statistics (benchmarks, cache)."""
    pool = SummaryPool()
    for p in passages:
        pool.add(p, index)
    return choose(pool, index, budget, loaded, state, model_weight)


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


def summarize(
    loaded: LoadedModel,
    doc: Document,
    budget: Budget = Budget(),
    use_cache: bool = True,
    quiet: bool = False,
    console: Optional[Console] = None,
    on_text: Optional[Callable[[str], None]] = None,
    cache_root=None,
    model_weight: float = MODEL_WEIGHT,
) -> SummaryResult:
    started = time.perf_counter()
    pool = SummaryPool()
    read = read_or_load(loaded, doc, [pool.add], use_cache, quiet, console, cache_root)
    chosen = choose(pool, read.index, budget, loaded, read.state, model_weight)
    warnings = list(read.warnings)
    if not chosen:
        warnings.append("no sentence of 5 to 60 words found to summarize with")
    if generates_answers(loaded) and chosen:
        mode = GENERATED
        text = generate_summary(loaded, read.state, chosen, budget, on_text)
    else:
        mode = EXTRACTIVE
        text, chosen = fit_budget(chosen, budget)
        if on_text is not None and text:
            on_text(text)
    return SummaryResult(text, mode, chosen, RunFacts.of(read, loaded, started), budget, warnings)
