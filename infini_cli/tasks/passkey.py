"""The passkey retrieval test over a grid of lengths x depths x trials.

Trials of one cell share the prompt except the key's digits (one token each), so they run
as one batch in lockstep: same memory per stream, larger matrix products. Keys come from
(seed, length, depth, trial), so a resumed run asks the same questions.
"""

from __future__ import annotations

import csv
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from ..checkpoint import LoadedModel
from ..errors import InputError
from ..memory import StreamState
from ..stream import greedy_batch, ingest, start_segment_for
from .passkey_prompt import Haystack, PasskeyPromptBuilder, first_integer

ANSWER_TOKENS = 8  # " 12345." and a little slack


def parse_length(text: str) -> int:
    """'8k' -> 8192, '1m' -> 1048576, '1000' -> 1000 (k and m are powers of two, as in '32K context')."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise InputError(f"--lengths: {text!r} is not a length; write numbers like 1000, 8k or 1m")
    value = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    if value < 64:
        raise InputError(f"--lengths: {text!r} is too short for the prompt; use at least 64 tokens")
    return int(value)


def parse_lengths(text: str) -> list[int]:
    return [parse_length(t) for t in text.split(",") if t.strip()]


def parse_depths(text: str) -> list[float]:
    out = []
    for t in text.split(","):
        if not t.strip():
            continue
        try:
            d = float(t)
        except ValueError:
            raise InputError(f"--depths: {t!r} is not a number; give fractions like 0,0.5,1") from None
        if not 0 <= d <= 1:
            raise InputError(f"--depths: {d} is outside 0..1; depths are fractions of the haystack")
        out.append(d)
    if not out:
        raise InputError("--depths: give at least one depth")
    return out


def load_haystack(tokenizer, path: Optional[Path]) -> Haystack:
    if path is None:
        return Haystack.standard(tokenizer)
    if str(path) == "-" or not path.exists():
        raise InputError(f"{path}: no such file; --haystack takes a text file to use as filler")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; --haystack takes a text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    if not raw.strip():
        raise InputError(f"{path}: is empty; --haystack needs a text file with sentences")
    if b"\0" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: looks binary, not text; --haystack needs a plain text file")
    for enc in ("utf-8-sig", "utf-16"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = raw.decode("utf-8", errors="replace")
    try:
        return Haystack.from_text(tokenizer, text, str(path))
    except ValueError:
        raise InputError(f"{path}: has no sentences to use as filler") from None


def trial_key(seed: int, length: int, depth: float, trial: int) -> str:
    return str(random.Random(f"passkey-{seed}-{length}-{depth:g}-{trial}").randint(10000, 99999))


@dataclass
class Trial:
    length: int
    depth: float
    trial: int
    key: str
    answer: str
    predicted: Optional[str]
    correct: bool
    tokens: int
    depth_reached: float
    key_token: int
    key_segment: int
    memory_writes_between: int
    seconds: float
    tokens_per_second: float
    device: str
    # the question and answer shared a segment where they fit (rows written before this
    # field existed were measured with plain segmenting)
    question_segment: bool = False


@dataclass
class Cell:
    length: int
    depth: float
    trials: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0


def run_cell(loaded: LoadedModel, builder: PasskeyPromptBuilder, length: int, depth: float,
             trial_ids: list[int], seed: int, device_name: str,
             on_tokens: Optional[Callable[[int], None]] = None, question_segment: bool = True) -> list[Trial]:
    """Run the given trials of one (length, depth) cell as one batch.

    question_segment: the question and the answer share a segment where they fit
    (stream.start_segment_for); False cuts segments every segment_len tokens regardless.
    """
    model, tok = loaded.model, loaded.tokenizer
    S = model.config.segment_len
    plan = builder.plan(length, depth)
    keys = [trial_key(seed, length, depth, t) for t in trial_ids]
    streams = [builder.iter_tokens(plan, k) for k in keys]
    total = plan.total_tokens
    # ingested first: everything before the question, or with question_segment off all the
    # prompt but its last token (which starts decoding)
    first = plan.question_start if question_segment else total - 1

    def lockstep() -> Iterable[torch.Tensor]:
        # gather about a segment of ids per stream before making a tensor: sentences are short
        rows: list[list[int]] = [[] for _ in keys]
        sent = 0
        for parts in zip(*streams):
            take = min(len(parts[0]), first - sent)
            for row, part in zip(rows, parts):
                row.extend(part[:take])
            sent += take
            if len(rows[0]) >= S:
                yield torch.tensor(rows, dtype=torch.long)
                rows = [[] for _ in keys]
        if rows[0]:
            yield torch.tensor(rows, dtype=torch.long)

    def last_tokens() -> torch.Tensor:
        return torch.tensor([builder.question_ids[-1]] * len(keys))

    t0 = time.perf_counter()
    state = StreamState.empty(model.config, len(keys), loaded.device, loaded.dtype)
    state = ingest(model, state, lockstep(), on_tokens=on_tokens)
    if question_segment:
        q = builder.question_ids
        state = start_segment_for(model, state, len(q), ANSWER_TOKENS)
        state = ingest(model, state, [torch.tensor([q[:-1]] * len(keys))], on_tokens=on_tokens)
    ids = greedy_batch(model, state, last_tokens(), ANSWER_TOKENS)
    seconds = time.perf_counter() - t0
    if on_tokens:
        on_tokens(1)
    out = []
    for i, t in enumerate(trial_ids):
        answer = tok.decode(ids[i].tolist())
        pred = first_integer(answer)
        out.append(Trial(
            length=length, depth=depth, trial=t, key=keys[i], answer=answer, predicted=pred,
            correct=pred == keys[i], tokens=total, depth_reached=round(plan.depth, 4),
            key_token=plan.key_start, key_segment=plan.key_start // S,
            memory_writes_between=(plan.question_start // S) - (plan.key_start // S),
            seconds=round(seconds / len(keys), 4),
            tokens_per_second=round(total * len(keys) / seconds, 1), device=device_name,
            question_segment=question_segment,
        ))
    return out


@dataclass
class GridResult:
    model: str
    device: str
    segment_len: int
    haystack: str
    question_segment: bool = True
    trials: list[Trial] = field(default_factory=list)

    def cells(self, lengths: list[int], depths: list[float]) -> list[Cell]:
        out = []
        for n in lengths:
            for d in depths:
                ts = [t for t in self.trials if t.length == n and t.depth == d]
                out.append(Cell(n, d, len(ts), sum(t.correct for t in ts)))
        return out

    def summary(self, lengths: list[int], depths: list[float]) -> dict:
        cells = self.cells(lengths, depths)
        n = sum(c.trials for c in cells)
        secs = sum(t.seconds for t in self.trials)
        toks = sum(t.tokens for t in self.trials)
        return {
            "model": self.model,
            "device": self.device,
            "segment_len": self.segment_len,
            "haystack": self.haystack,
            "question_segment": self.question_segment,
            "accuracy": round(sum(c.correct for c in cells) / n, 4) if n else 0.0,
            "trials": n,
            "tokens_per_second": round(toks / secs, 1) if secs else 0.0,
            "seconds": round(secs, 2),
            "cells": [{"length": c.length, "depth": c.depth, "trials": c.trials, "correct": c.correct,
                       "accuracy": round(c.accuracy, 4)} for c in cells],
        }


RUN_FILE = "run.json"


def claim_results_folder(out_dir: Path, identity: dict[str, object]) -> None:
    """One (model, haystack, seed) per results folder: resuming under another would mix their trials.

    The first run writes its identity to run.json; a later run with another one is refused
    with the differing fields named. A folder from before run.json existed is taken as is.
    """
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = None
        if isinstance(saved, dict):
            diffs = [f"{k}: {saved.get(k)} -> {v}" for k, v in identity.items() if saved.get(k) != v]
            if diffs:
                raise InputError(f"{out_dir}: holds trials of another run ({'; '.join(diffs)}); "
                                 f"pass a new --out, or delete the folder to start afresh")
            return
    path.write_text(json.dumps(identity, indent=2) + "\n")


def results_identity(model_path: Path, haystack: Optional[Path], seed: int) -> dict[str, object]:
    """What makes two runs' trials comparable: the checkpoint, the filler's bytes and the keys' seed."""
    from ..checkpoint import model_hash
    from ..readers import file_sha256

    return {"model": f"{model_path.name} {model_hash(model_path)[:16]}",
            "haystack": f"{haystack.name} {file_sha256(haystack)[:16]}" if haystack else "standard filler",
            "seed": seed}


def read_rows(jsonl: Path, row_type: type) -> list:
    """Rows already in a results file (for resuming), as row_type; broken lines are skipped."""
    done = []
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                done.append(row_type(**json.loads(line)))
            except (ValueError, TypeError):
                continue
    return done


def read_done(jsonl: Path) -> list[Trial]:
    """Trials already in a results file (for resuming); broken lines are skipped."""
    return read_rows(jsonl, Trial)


def write_summary(out_dir: Path, summary: dict) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out_dir / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["length", "depth", "trials", "correct", "accuracy"])
        for c in summary["cells"]:
            w.writerow([c["length"], c["depth"], c["trials"], c["correct"], c["accuracy"]])


def plot_heatmap(summary: dict, lengths: list[int], depths: list[float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install matplotlib (or the package's [plot] extra)") from None
    grid = [[0.0] * len(depths) for _ in lengths]
    for c in summary["cells"]:
        grid[lengths.index(c["length"])][depths.index(c["depth"])] = c["accuracy"] * 100
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 + 0.55 * len(depths)), max(2.8, 1.4 + 0.45 * len(lengths))))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_yticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_xlabel("depth of the key in the haystack")
    ax.set_ylabel("prompt length (tokens)")
    for i in range(len(lengths)):
        for j in range(len(depths)):
            ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"passkey retrieval, % correct\n{Path(summary['model']).name}, {Path(summary['haystack']).name}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_length(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)
