"""`infini babilong`: BABILong cells (task x length) answered by a model, scored by BABILong's rule.

Methods (the product's ways of answering, side by side on the same samples):
  memory    the model reads the document into its memory; the question starts its own
            segment, so the answer can come from the memory alone;
  local     the same with every gate forced local (the memory switched off);
  lexical   `infini ask`'s lexical evidence: the best evidence sentence is the answer;
  writer    `infini ask` with a writer: it answers from the lexical evidence (RAG).

Samples of a task are the same at every length (as in BABILong); the haystack around them
is drawn from (seed, task, length, sample), so a resumed run asks the same questions.
Samples of one cell run in lockstep batches: every document of a cell is cut or filled to
exactly the cell's length, so their streams stay aligned.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..checkpoint import LoadedModel
from ..errors import InputError
from ..memory import StreamState
from ..stream import generate, ingest
from .babilong import BabiSample, BabiTask, SampleBuilder, draw_samples, is_correct
from .passkey_prompt import Haystack

METHODS = ("memory", "local", "lexical", "writer")
ANSWER_TOKENS = 8
LOCKSTEP = 8          # samples of a cell read at once
BLOCK = 4096          # tokens per lockstep chunk


@dataclass
class Row:
    task: str
    length: int
    sample: int
    story: int
    question: str
    target: str
    output: str
    correct: bool
    tokens: int
    seconds: float
    method: str


def _blocks(chunks: Iterator[list[int]], size: int) -> Iterator[list[int]]:
    buf: list[int] = []
    for c in chunks:
        buf.extend(c)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] if text.strip() else ""


@dataclass
class Cell:
    task: BabiTask
    length: int
    samples: list[BabiSample]


class BabilongRunner:
    def __init__(self, loaded: LoadedModel, builder_haystack: Optional[Haystack], seed: int, method: str = "memory",
                 writer: Optional[LoadedModel] = None) -> None:
        if method not in METHODS:
            raise InputError(f"--method {method}: choose one of {', '.join(METHODS)}")
        if method == "writer" and writer is None:
            raise InputError("--method writer needs a writer: infini pull smollm2 (or --writer PATH)")
        self.loaded, self.seed, self.method, self.writer = loaded, seed, method, writer
        self.builder = SampleBuilder(loaded.tokenizer, builder_haystack)

    def plan_for(self, task: str, length: int, i: int, sample: BabiSample):
        rng = random.Random(f"babilong-{self.seed}-{task}-{length}-{i}")
        return self.builder.plan(sample, length, rng)

    def run_cell(self, cell: Cell, indices: list[int], on_row: Callable[[Row], None]) -> None:
        """Answer the samples `indices` of a cell; each finished row goes to on_row."""
        if self.method in ("lexical", "writer"):
            for i in indices:
                on_row(self._ask_row(cell, i))
            return
        # streams of one lockstep batch have one length: the cell's, or the facts' where the
        # story alone is longer (and at length 0, the facts alone)
        by_length: dict[int, list[int]] = {}
        for i in indices:
            by_length.setdefault(self.doc_tokens(cell, i), []).append(i)
        for group_all in by_length.values():
            for start in range(0, len(group_all), LOCKSTEP):
                self._memory_rows(cell, group_all[start:start + LOCKSTEP], on_row)

    def doc_tokens(self, cell: Cell, i: int) -> int:
        facts = sum(len(f) for f in self.builder.fact_ids(cell.samples[i]))
        return max(cell.length, facts)

    def _memory_rows(self, cell: Cell, group: list[int], on_row: Callable[[Row], None]) -> None:
        model, tok = self.loaded.model, self.loaded.tokenizer
        use_memory = self.method == "memory"
        started = time.perf_counter()
        streams = []
        for i in group:
            s = cell.samples[i]
            plan = self.plan_for(cell.task.name, cell.length, i, s)
            n = self.doc_tokens(cell, i)
            streams.append(_blocks(self.builder.iter_exact(s, plan, n), BLOCK))

        def lockstep() -> Iterator[torch.Tensor]:
            for blocks in zip(*streams):
                if len({len(b) for b in blocks}) != 1:
                    raise RuntimeError("lockstep streams lost alignment")
                yield torch.tensor(blocks, dtype=torch.long)

        state = StreamState.empty(model.config, len(group), self.loaded.device, self.loaded.dtype)
        state = ingest(model, state, lockstep(), use_memory=use_memory)
        read_s = time.perf_counter() - started
        for b, i in enumerate(group):
            s = cell.samples[i]
            t0 = time.perf_counter()
            q = self.builder.question_ids(s)
            out: list[int] = []
            for t in generate(model, state.select(b), q, ANSWER_TOKENS, use_memory=use_memory,
                              question_tokens=len(q), answer_reserve=ANSWER_TOKENS):
                if t == tok.eos_id:
                    break
                out.append(t)
                text = tok.decode(out)
                if "." in text or "\n" in text.strip():
                    break
            output = _first_line(tok.decode(out))
            secs = read_s / len(group) + time.perf_counter() - t0
            on_row(Row(s.task, cell.length, i, s.story, s.question, s.answer, output,
                       is_correct(output, s.answer, cell.task.answer_words, s.question),
                       state.tokens_seen + len(q), round(secs, 3), self.method))

    def _ask_row(self, cell: Cell, i: int) -> Row:
        """`infini ask` on the sample as a file: its cache entry (in a folder of its own,
        removed after) lets the second hop read the sentences again, as for any user's file."""
        import tempfile

        from .. import cache as doc_cache
        from ..readers import open_document
        from .ask import ask

        s = cell.samples[i]
        t0 = time.perf_counter()
        plan = self.plan_for(cell.task.name, cell.length, i, s)
        n = self.doc_tokens(cell, i)
        ids = [t for c in self.builder.iter_exact(s, plan, n) for t in c]
        text = self.loaded.tokenizer.decode(ids).strip()
        with tempfile.TemporaryDirectory(prefix="infini-babilong-") as tmp:
            path = Path(tmp) / "sample.txt"
            path.write_text(text, encoding="utf-8")
            result = ask(self.loaded, open_document(str(path)), s.question, top_k=3, use_cache=True, quiet=True,
                         cache_root=Path(tmp) / "cache", writer=self.writer if self.method == "writer" else None)
            doc_cache.clear(Path(tmp) / "cache")
        output = _first_line(result.answer)
        return Row(s.task, cell.length, i, s.story, s.question, s.answer, output,
                   is_correct(output, s.answer, cell.task.answer_words, s.question), len(ids),
                   round(time.perf_counter() - t0, 3), self.method)


def build_cells(tasks: list[BabiTask], lengths: list[int], n: int, seed: int, split: str) -> list[Cell]:
    cells = []
    for task in tasks:
        samples = draw_samples(task, split, n, random.Random(f"babilong-samples-{seed}-{task.name}"))
        if not samples:
            raise InputError(f"task {task.name}: no samples in the {split} split")
        for length in lengths:
            cells.append(Cell(task, length, samples))
    return cells


def read_rows(path: Path) -> list[Row]:
    """Samples already in a results file (for resuming); broken lines are skipped."""
    from .passkey import read_rows as read_jsonl_rows

    return read_jsonl_rows(path, Row)


def summarize_rows(rows: list[Row], cells: list[Cell], meta: dict) -> dict:
    out_cells = []
    for c in cells:
        rs = [r for r in rows if r.task == c.task.name and r.length == c.length]
        out_cells.append({"task": c.task.name, "length": c.length, "correct": sum(r.correct for r in rs),
                          "total": len(rs), "accuracy": round(sum(r.correct for r in rs) / len(rs), 4) if rs else 0.0})
    total = sum(c["total"] for c in out_cells)
    secs = sum(r.seconds for r in rows)
    return {**meta, "accuracy": round(sum(c["correct"] for c in out_cells) / total, 4) if total else 0.0,
            "samples": total, "seconds": round(secs, 2),
            "tokens_per_second": round(sum(r.tokens for r in rows) / secs, 1) if secs else 0.0,
            "cells": out_cells}


def row_json(r: Row) -> str:
    return json.dumps(asdict(r), ensure_ascii=False)
