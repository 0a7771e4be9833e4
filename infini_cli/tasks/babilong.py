"""BABILong (Kuratov et al., 2024): bAbI stories spread through book text, the question last.

A sample is one bAbI question: the sentences of its story that come before it (earlier
questions left out), placed in order at random sentence boundaries of background text that
fills the target length, then the question. Answers are one word; scoring is BABILong's: the
lower-cased first sentence of the output names the target and no other of the task's answer
words (those that occur in the question aside).

Any bAbI-format data works: files named `qa<N>_*.txt`, one sentence a line as `N text`, N
restarting at 1 with each story, questions as `N question<TAB>answer<TAB>supporting ids`.
A task's answer words are every answer its file holds, so nothing here is specific to the
20 original tasks.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import InputError
from ..tokenizer import TextTokenizer
from .passkey_prompt import Haystack

# The question starts its own line after the document; the answer follows "Answer:".
QUESTION_TEMPLATE = "\nQuestion: {question}\nAnswer:"
ANSWER_TEMPLATE = " {answer}."
VALID_FRACTION = 0.1          # the last tenth of a file's stories: the validation split
_FILE = re.compile(r"^(qa\d+)_.*\.txt$")
_WORD = re.compile(r"[a-z]+")
MAX_STORY_LINES = 10_000      # a story longer than this is not bAbI data


@dataclass(frozen=True)
class BabiSample:
    task: str                  # "qa1"
    facts: tuple[str, ...]     # the story's sentences before the question, in order
    question: str
    answer: str
    story: int                 # index of the story in its file

    def prompt_question(self) -> str:
        return QUESTION_TEMPLATE.format(question=self.question)


@dataclass
class BabiTask:
    name: str
    samples: list[BabiSample]
    answer_words: frozenset[str]   # every answer of the file, lower-cased

    def split(self, part: str) -> list[BabiSample]:
        """'train' (the first 90% of stories), 'valid' (the rest) or 'all'."""
        if part == "all":
            return self.samples
        n_stories = self.samples[-1].story + 1 if self.samples else 0
        cut = n_stories - max(1, round(n_stories * VALID_FRACTION))
        if part == "train":
            return [s for s in self.samples if s.story < cut]
        if part == "valid":
            return [s for s in self.samples if s.story >= cut]
        raise ValueError(f"unknown split {part!r}")


def parse_babi(path: Path, task: str) -> BabiTask:
    """Read one bAbI-format file; a malformed line is an InputError naming file and line."""
    samples: list[BabiSample] = []
    story: list[str] = []
    n_story = -1
    expected = 1
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            num, _, rest = line.partition(" ")
            if not num.isdigit():
                raise InputError(f"{path}:{lineno}: a bAbI line starts with its number in the story, e.g. "
                                 f"'1 Mary moved to the bathroom.'")
            n = int(num)
            if n == 1:
                story, n_story = [], n_story + 1
            elif n != expected or len(story) > MAX_STORY_LINES:
                raise InputError(f"{path}:{lineno}: line number {n} where {expected} was expected")
            expected = n + 1
            if "\t" in rest:
                parts = rest.split("\t")
                question, answer = parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""
                if not question or not answer:
                    raise InputError(f"{path}:{lineno}: a question line is 'N question<TAB>answer<TAB>ids'")
                samples.append(BabiSample(task, tuple(story), question, answer, n_story))
            else:
                story.append(rest.strip())
    if not samples:
        raise InputError(f"{path}: no questions; is it a bAbI-format file?")
    words = frozenset(w for s in samples for w in _WORD.findall(s.answer.lower()))
    return BabiTask(task, samples, words)


def find_task_files(data_dir: Path) -> dict[str, Path]:
    """{task: file} for the `qa<N>_*.txt` files of a folder (first file per task, sorted)."""
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a folder; --data takes a folder of bAbI files named qa<N>_*.txt")
    found: dict[str, Path] = {}
    for p in sorted(data_dir.iterdir()):
        m = _FILE.match(p.name)
        if m and m.group(1) not in found:
            found[m.group(1)] = p
    if not found:
        raise InputError(f"{data_dir}: no files named qa<N>_*.txt")
    return found


def load_tasks(data_dir: Path, names: Sequence[str]) -> list[BabiTask]:
    files = find_task_files(data_dir)
    missing = [n for n in names if n not in files]
    if missing:
        raise InputError(f"{data_dir}: no file for {', '.join(missing)} (has {', '.join(sorted(files))})")
    return [parse_babi(files[n], n) for n in names]


def parse_tasks(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if not re.fullmatch(r"qa\d+", t)]
    if not names or bad:
        raise InputError(f"--tasks {text!r}: give task names like qa1,qa2,qa5")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- scoring

def first_sentence(text: str) -> str:
    text = text.strip().lower()
    m = re.search(r"[.!?\n]", text)
    return text[:m.start()] if m else text


def is_correct(output: str, target: str, answer_words: frozenset[str], question: str) -> bool:
    """BABILong's rule: the first sentence names every target word and no other answer word
    of the task, words that occur in the question aside (they may be echoed)."""
    said = set(_WORD.findall(first_sentence(output)))
    wanted = set(_WORD.findall(target.lower()))
    if not wanted or not wanted <= said:
        return False
    asked = set(_WORD.findall(question.lower()))
    return not ((said & answer_words) - wanted - asked)


# ----------------------------------------------------------------------------- building samples

@dataclass(frozen=True)
class SamplePlan:
    """Where the facts go: haystack sentence index before which each fact sits."""

    start: int                         # first haystack sentence (of the cycle)
    n_sentences: int                   # haystack sentences in the sample
    slots: tuple[int, ...]             # per fact: haystack sentences before it (non-decreasing)


class SampleBuilder:
    """Token streams of BABILong samples at any length, built chunk by chunk (constant memory)."""

    def __init__(self, tokenizer: TextTokenizer, haystack: Optional[Haystack]) -> None:
        self.tok = tokenizer
        self.haystack = haystack
        self._facts: dict[BabiSample, list[list[int]]] = {}

    def fact_ids(self, sample: BabiSample) -> list[list[int]]:
        """The facts tokenized (once a sample: planning, grouping and streaming all need them)."""
        if sample not in self._facts:
            self._facts[sample] = [self.tok.encode(" " + f) for f in sample.facts]
        return self._facts[sample]

    def question_ids(self, sample: BabiSample) -> list[int]:
        return self.tok.encode(sample.prompt_question())

    def plan(self, sample: BabiSample, length: int, rng: random.Random,
             facts_tokens: Optional[int] = None) -> SamplePlan:
        """Haystack to fill a document of `length` tokens with the facts (0: the facts alone).

        The length counts the document, not the question after it."""
        if facts_tokens is None:
            facts_tokens = sum(len(f) for f in self.fact_ids(sample))
        budget = length - facts_tokens
        if length <= 0 or budget <= 0 or self.haystack is None:
            return SamplePlan(0, 0, tuple(0 for _ in sample.facts))
        start = rng.randrange(len(self.haystack.sentences))
        n = sentences_within_from(self.haystack, start, budget)
        slots = tuple(sorted(rng.randint(0, n) for _ in sample.facts))
        return SamplePlan(start, n, slots)

    def iter_context(self, sample: BabiSample, plan: SamplePlan) -> Iterator[list[int]]:
        """The document (haystack with the facts in it) as token chunks, without the question."""
        facts = self.fact_ids(sample)
        done = 0
        for fact, slot in zip(facts, plan.slots):
            if slot > done and self.haystack is not None:
                yield from self.haystack.iter_chunks(plan.start + done, slot - done)
                done = slot
            yield fact
        if plan.n_sentences > done and self.haystack is not None:
            yield from self.haystack.iter_chunks(plan.start + done, plan.n_sentences - done)

    def iter_exact(self, sample: BabiSample, plan: SamplePlan, n_tokens: int) -> Iterator[list[int]]:
        """The document cut or filled with further haystack to exactly n_tokens (never fewer
        than the facts): samples of one length then run in lockstep."""
        done = 0
        for chunk in self.iter_context(sample, plan):
            done += len(chunk)
            yield chunk
        if self.haystack is None or done >= n_tokens:
            return
        i = plan.start + plan.n_sentences
        while done < n_tokens:
            chunk = self.haystack.sentences[i % len(self.haystack.sentences)][: n_tokens - done]
            done += len(chunk)
            i += 1
            yield chunk

    def context_text(self, sample: BabiSample, plan: SamplePlan) -> str:
        """The document as text (for `infini ask` on a built sample, and tests)."""
        return self.tok.decode([t for c in self.iter_context(sample, plan) for t in c]).lstrip()


def sentences_within_from(haystack: Haystack, start: int, budget: int) -> int:
    """Largest n with haystack.tokens_in(start, n) <= budget (every sentence has a token)."""
    lo, hi = 0, max(0, budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if haystack.tokens_in(start, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def draw_samples(task: BabiTask, split: str, n: int, rng: random.Random) -> list[BabiSample]:
    """n samples of a split without replacement (all of them when there are fewer)."""
    pool = task.split(split)
    if n >= len(pool):
        return list(pool)
    return rng.sample(pool, n)


# ----------------------------------------------------------------------------- command helpers

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_HAYSTACK = "books/valid/1902_the_vultures.txt"


def _shared(rel: str) -> Optional[Path]:
    for root in (SHARED_DATA, Path("../shared/data")):
        if (root / rel).exists():
            return root / rel
    return None


def default_data_dir() -> Path:
    p = _shared("babi")
    if p is None:
        raise InputError("no bAbI data found at ../shared/data/babi; pass --data DIR (files named qa<N>_*.txt)")
    return p


def default_haystack() -> Path:
    p = _shared(DEFAULT_HAYSTACK)
    if p is None:
        raise InputError(f"no haystack found at ../shared/data/{DEFAULT_HAYSTACK}; pass --haystack FILE")
    return p


def parse_lengths(text: str) -> list[int]:
    """'0,4k,1m' -> [0, 4096, 1048576]; 0 is the facts alone."""
    from .passkey import parse_length

    out = [0 if t.strip() == "0" else parse_length(t) for t in text.split(",") if t.strip()]
    if not out:
        raise InputError("--lengths: give at least one length, e.g. 0,4k,128k")
    return list(dict.fromkeys(out))


def plot_cells(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install matplotlib (or the package's [plot] extra)") from None
    from .passkey import format_length

    tasks = list(dict.fromkeys(c["task"] for c in summary["cells"]))
    lengths = list(dict.fromkeys(c["length"] for c in summary["cells"]))
    grid = [[0.0] * len(lengths) for _ in tasks]
    for c in summary["cells"]:
        grid[tasks.index(c["task"])][lengths.index(c["length"])] = 100 * c["accuracy"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.8 * len(lengths)), max(2.5, 1.2 + 0.5 * len(tasks))))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [format_length(n) if n else "0" for n in lengths])
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("document length (tokens)")
    for i in range(len(tasks)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"BABILong, % correct ({summary['method']})\n{Path(summary['model']).name}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
