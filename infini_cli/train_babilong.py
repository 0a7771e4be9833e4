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

from .tasks.babilong import ANSWER_TEMPLATE, BabiSample, SampleBuilder, load_tasks, parse_tasks
from .book_windows import BookWindows
from .tasks.passkey_prompt import Haystack
from .tokenizer import TextTokenizer


class BabilongSampler:
    def __init__(self, tok: TextTokenizer, segment_len: int, babi_dir: str, tasks: str, book_paths: list[str],
                 max_segments: int, start_segments: int, ramp: int, split: str = "train",
                 local_prob: float = 0.0) -> None:
        self.tok, self.S = tok, segment_len
        self.babi_dir, self.task_names = babi_dir, tasks
        self.tasks = load_tasks(Path(babi_dir), parse_tasks(tasks))
        self.pools = [t.split(split) for t in self.tasks]
        self.book_paths = book_paths
        self.max_segments, self.start_segments, self.ramp = max_segments, start_segments, ramp
        self.local_prob = local_prob
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
        """tokens [B, (n+1)*S], answer positions [P, 2] and targets [P], and the samples' tasks.

        segments: the document's length in segments (None: drawn up to the curriculum's)."""
        S = self.S
        drawn = segments or rng.randint(1, max(1, self.segments_at(step)))
        builders = [SampleBuilder(self.tok, self._haystack(rng)) for _ in range(batch_size)]
        samples, facts = [], []
        for b in builders:
            # a story longer than the drawn document is drawn again (a few times), so early
            # steps of the curriculum stay short; long stories come as the documents grow
            for _ in range(8):
                s = self._draw(rng)
                f = sum(len(x) for x in b.fact_ids(s))
                if f <= drawn * S:
                    break
            samples.append(s)
            facts.append(f)
        # at least the drawn length, and enough for the longest story of the batch
        n = max(drawn, max(-(-f // S) for f in facts))
        seqs, pos, tgt = [], [], []
        for i, (s, b) in enumerate(zip(samples, builders)):
            q = b.question_ids(s)
            a = self.tok.encode(ANSWER_TEMPLATE.format(answer=s.answer))
            # where the document ends: on a boundary (the question starts a segment and the
            # answer must come from memory), or with local_prob, up to m tokens into the last
            # segment, which the question then shares, as stream.start_segment_for lets it
            # wherever it fits: the document's tail is then in local attention
            room = S - len(q) - len(a)
            m = rng.randint(0, room) if room > 0 and rng.random() < self.local_prob else 0
            n_doc = max(n * S + m, facts[i])
            plan = b.plan(s, n_doc, rng, facts[i])
            ctx = [t for c in b.iter_exact(s, plan, n_doc) for t in c][:n_doc]
            start = len(ctx)
            tail = (q + a)[:(n + 1) * S - start]
            for j in range(len(a)):
                if start + len(q) + j < (n + 1) * S:
                    # the token before answer token j predicts it
                    pos.append((i, start + len(q) - 1 + j))
                    tgt.append(a[j])
            seqs.append(ctx + tail + [self.tok.pad_id] * ((n + 1) * S - start - len(tail)))
        return torch.tensor(seqs), torch.tensor(pos), torch.tensor(tgt), [s.task for s in samples]


def make_sampler(cfg, tok: TextTokenizer, segment_len: int, book_paths: list[str]) -> Optional[BabilongSampler]:
    if cfg.batch_babi <= 0:
        return None
    return BabilongSampler(tok, segment_len, cfg.babi_dir, cfg.babi_tasks, book_paths, cfg.babi_segments,
                           cfg.babi_segments_start, cfg.babi_ramp, local_prob=cfg.babi_local_prob)
