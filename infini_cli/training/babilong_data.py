"""Training data for BABILong: bAbI facts spread through book text, the question in its own segment.

A batch holds sequences of `n` context segments (the document: book sentences with a
story's facts at random sentence boundaries, cut to exactly n * segment_len tokens) and one
question segment (question, answer, padding). The question starts a segment as it does when
the product asks (stream.start_segment_for), so the answer can come only from the memory.
Only the training split of each task file is used (babilong.BabiTask.split); the last tenth
of the stories is kept for validation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import torch

from ..tasks.babilong import ANSWER_TEMPLATE, BabiSample, SampleBuilder, load_tasks, parse_tasks
from .book_windows import BookWindows
from ..tasks.passkey_prompt import Haystack
from ..tokenizer import TextTokenizer


class BabilongSampler:
    def __init__(self, tok: TextTokenizer, segment_len: int, babi_dir: str, tasks: str, book_paths: list[str],
                 max_segments: int, start_segments: int, ramp: int, split: str = "train",
                 local_prob: float = 0.0, alone_prob: float = 0.0) -> None:
        self.tok, self.S = tok, segment_len
        self.babi_dir, self.task_names = babi_dir, tasks
        self.tasks = load_tasks(Path(babi_dir), parse_tasks(tasks))
        self.pools = [t.split(split) for t in self.tasks]
        self.book_paths = book_paths
        self.max_segments, self.start_segments, self.ramp = max_segments, start_segments, ramp
        self.local_prob, self.alone_prob = local_prob, alone_prob
        self.books = BookWindows(book_paths)

    def valid(self) -> "BabilongSampler":
        """The same sampler over the validation stories (built once)."""
        if not hasattr(self, "_valid"):
            self._valid = BabilongSampler(self.tok, self.S, self.babi_dir, self.task_names, self.book_paths,
                                          self.max_segments, 0, 0, split="valid")
        return self._valid

    def segments_at(self, step: int) -> int:
        """Longest document at this step, in segments: the curriculum grows it over `ramp` steps."""
        if self.ramp <= 0 or self.start_segments <= 0:
            return self.max_segments
        frac = min(1.0, step / self.ramp)
        return round(self.start_segments + frac * (self.max_segments - self.start_segments))

    def _haystack(self, rng: random.Random) -> Haystack:
        path, sentences = self.books.draw(rng, 60_000, "Nothing happened.")
        return Haystack(self.tok, sentences, path)

    def _draw(self, rng: random.Random) -> BabiSample:
        return rng.choice(rng.choice(self.pools))

    def batch(self, rng: random.Random, step: int, batch_size: int, segments: Optional[int] = None):
        """tokens [B, T], answer positions [P, 2] and targets [P], and the samples' tasks.

        segments: the document's length in segments (None: drawn up to the curriculum's;
        0: every document is the facts alone)."""
        S = self.S
        drawn = segments if segments is not None else rng.randint(1, max(1, self.segments_at(step)))
        builders = [SampleBuilder(self.tok, self._haystack(rng)) for _ in range(batch_size)]
        samples, facts, alone = [], [], []
        for b in builders:
            # a story longer than the drawn document is drawn again (a few times), so early
            # steps of the curriculum stay short; long stories come as the documents grow
            for _ in range(8):
                s = self._draw(rng)
                f = sum(len(x) for x in b.fact_ids(s))
                if drawn == 0 or f <= drawn * S:
                    break
            samples.append(s)
            facts.append(f)
            # drawn only when asked for, so that runs without it see the data they always saw
            alone.append(drawn == 0 or (segments is None and self.alone_prob > 0 and rng.random() < self.alone_prob))
        # at least the drawn length, and enough for the longest story among the haystack documents
        n = max([drawn] + [-(-f // S) for f, a in zip(facts, alone) if not a])
        rows = []
        for i, (s, b) in enumerate(zip(samples, builders)):
            q = b.question_ids(s)
            a = self.tok.encode(ANSWER_TEMPLATE.format(answer=s.answer))
            if alone[i]:
                ctx, start = self._alone(b, s, len(q) + len(a))
            else:
                ctx = self._in_haystack(b, s, n, facts[i], len(q) + len(a), rng)
                start = len(ctx)
            rows.append((ctx, start, q, a))
        T = max([(n + 1) * S] + [-(-(st + len(q) + len(a)) // S) * S for _, st, q, a in rows])
        seqs, pos, tgt = [], [], []
        for i, (ctx, start, q, a) in enumerate(rows):
            for j in range(len(a)):
                # the token before answer token j predicts it
                pos.append((i, start + len(q) - 1 + j))
                tgt.append(a[j])
            seq = ctx + [self.tok.pad_id] * (start - len(ctx)) + q + a
            seqs.append(seq + [self.tok.pad_id] * (T - len(seq)))
        return torch.tensor(seqs), torch.tensor(pos), torch.tensor(tgt), [s.task for s in samples]

    def _in_haystack(self, b: SampleBuilder, s: BabiSample, n: int, facts: int, qa: int,
                     rng: random.Random) -> list[int]:
        """The facts in book text, exactly n segments long (or up to a segment more)."""
        S = self.S
        # where the document ends: on a boundary (the question starts a segment and the
        # answer must come from memory), or with local_prob, up to m tokens into the last
        # segment, which the question then shares, as stream.start_segment_for lets it
        # wherever it fits: the document's tail is then in local attention
        room = S - qa
        m = rng.randint(0, room) if room > 0 and rng.random() < self.local_prob else 0
        n_doc = max(n * S + m, facts)
        plan = b.plan(s, n_doc, rng, facts)
        return [t for c in b.iter_exact(s, plan, n_doc) for t in c][:n_doc]

    def _alone(self, b: SampleBuilder, s: BabiSample, qa: int) -> tuple[list[int], int]:
        """The facts alone and where the question starts: right after them, or at the next
        segment when question and answer would not fit in what is left of this one (the
        product commits that shorter segment first: stream.start_segment_for; here the gap
        is padding)."""
        S = self.S
        ctx = [t for f in b.fact_ids(s) for t in f]
        used = len(ctx) % S
        if used and used + qa > S >= qa:
            return ctx, len(ctx) + S - used
        return ctx, len(ctx)


def make_sampler(cfg, tok: TextTokenizer, segment_len: int, book_paths: list[str]) -> Optional[BabilongSampler]:
    if cfg.batch_babi <= 0:
        return None
    return BabilongSampler(tok, segment_len, cfg.babi_dir, cfg.babi_tasks, book_paths, cfg.babi_segments,
                           cfg.babi_segments_start, cfg.babi_ramp, local_prob=cfg.babi_local_prob,
                           alone_prob=cfg.babi_alone_prob)
