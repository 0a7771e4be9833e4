"""Training: book text mixed with synthetic passkey retrieval, BPTT across segments, resume.

Each step has up to four parts (each switched off by a batch size of 0):
  * text: random windows of several segments from the training books, full LM loss, so the
    memory learns to help ordinary prose;
  * passkey: Landmark-template prompts (standard filler or book prose as haystack, the key at
    any depth, the first segment included), loss on the answer digits;
  * copy: digit strings said again after some haystack (ordered recall);
  * BABILong: bAbI facts spread through book windows, the question after them, loss on the
    answer (babilong_data.py).

Length without the cost of length: with the linear memory rule a segment written with
weight w is exactly that segment written w times. Pure-haystack segments of a passkey prompt
are written with large random weights, so a prompt of a few hundred real tokens carries
the memory mass of a haystack up to `amplify_max` times longer. This trains the property
that matters at a million tokens (the needle's key must outweigh all the filler in
sigma(q).z) at the price of a short sequence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..config import ModelConfig, preset
from ..errors import InputError
from .book_windows import BookWindows
from ..memory import StreamState
from ..model import InfiniTransformer
from ..stream import generate, train_forward
from .number_distractors import sprinkle_near_misses, sprinkle_number_phrases, sprinkle_numbers
from .technical_text import mix_into
from ..tasks.passkey_prompt import Haystack, PasskeyPromptBuilder, first_integer, random_key
from ..tokenizer import TextTokenizer, train_tokenizer


@dataclass
class TrainConfig:
    out_dir: str = "runs/small"
    data_dir: str = "../shared/data/books/train"
    preset: str = "small"
    steps: int = 4000
    seed: int = 0
    batch_text: int = 8
    text_segments: int = 4
    batch_passkey: int = 16
    passkey_segments: int = 6          # longest real passkey prompt, in segments
    passkey_segments_start: int = 0    # curriculum: longest prompt at step 0 (0: no curriculum)
    length_ramp: int = 0               # steps over which prompts grow to passkey_segments
    multi_query_prob: float = 0.0      # share of prompts that ask the question again after more haystack
    answer_cross_prob: float = 0.0     # share of single-question prompts whose answer straddles a segment boundary
    passkey_lm_weight: float = 0.0     # LM loss on the whole passkey prompt (dense copy signal)
    batch_copy: int = 0                # sequences of the copy task per step (0: off)
    copy_segments: int = 4             # their length, in segments
    copy_weight: float = 1.0
    copy_local_start: float = 0.5      # share of copies kept inside one segment at step 0 ...
    copy_local_end: float = 0.5        # ... and after copy_local_ramp steps (local copying comes first)
    copy_local_ramp: int = 0
    stop_at: Optional[int] = None      # stop (save, write the model) at this step; the schedule keeps `steps`
    init_from: Optional[str] = None    # start a fresh run from this float checkpoint's weights
    reset_gates: bool = False          # with init_from: gates back to their initial value (mostly local)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    gate_lr_mult: float = 10.0
    weight_decay: float = 0.1
    warmup: int = 100
    clip: float = 1.0
    passkey_loss_weight: float = 1.0
    book_haystack_prob: float = 0.5
    haystack_numbers_prob: float = 0.0  # share of book haystacks with numbers sprinkled in (distractors for the key)
    haystack_phrases_prob: float = 0.0  # share with numbers as prose writes them: dates, years, runs, decoy statements
    haystack_near_miss_prob: float = 0.0  # share with statements that borrow the key line's words for another number
    haystack_technical_prob: float = 0.0  # share with digit-dense technical text (tables, logs) mixed in
    amplify_prob: float = 0.75
    amplify_start: int = 600            # steps of plain prompts before amplification starts
    amplify_ramp: int = 1500            # steps over which the largest weight grows
    amplify_max: float = 20000.0        # largest write weight (x segment_len tokens)
    eval_every: int = 200
    save_every: int = 100
    tokenizer_sample_bytes: int = 150_000   # per book
    threads: Optional[int] = None
    memory_rule: Optional[str] = None   # override the preset's rule (a delta run may start from a linear model)
    segment_len: Optional[int] = None   # override the preset's segment (no weight depends on it)
    # BABILong: bAbI facts spread through book text, answered from memory (0: off)
    batch_babi: int = 0
    babi_dir: str = "../shared/data/babi"
    babi_tasks: str = "qa1,qa2,qa3,qa4,qa5"
    babi_segments: int = 16             # longest document, in segments
    babi_segments_start: int = 0        # curriculum: longest document at step 0 (0: none)
    babi_ramp: int = 0                  # steps over which documents grow to babi_segments
    babi_loss_weight: float = 1.0
    babi_local_prob: float = 0.0        # share of documents ending mid-segment (their tail in local attention)
    babi_alone_prob: float = 0.0        # share of documents that are the facts alone (BABILong's length 0)
    babi_eval_segments: str = "1,16,64"  # validation lengths in segments (0: the facts alone)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# ----------------------------------------------------------------------------- data

ANSWER = " {k}."   # what follows the question in training prompts


def load_or_train_tokenizer(cfg: TrainConfig, vocab_size: int, log: Callable[[str], None]) -> TextTokenizer:
    path = Path(cfg.out_dir) / "tokenizer.json"
    if path.exists():
        return TextTokenizer.from_json(path.read_text())
    if cfg.init_from:
        # a run that continues a model must speak its tokenizer
        from ..checkpoint import read_header
        from ..registry import resolve_model

        tok = TextTokenizer.from_json(read_header(resolve_model(cfg.init_from)).tokenizer_json)
        path.write_text(tok.to_json())
        return tok
    log(f"training a {vocab_size}-token byte-level BPE tokenizer on {cfg.data_dir}")

    def sample():
        for p in sorted(Path(cfg.data_dir).glob("*.txt")):
            text = p.read_text(encoding="utf-8", errors="replace")[: cfg.tokenizer_sample_bytes]
            for para in text.split("\n\n"):
                if para.strip():
                    yield para

    tok = train_tokenizer(sample(), vocab_size)
    path.write_text(tok.to_json())
    return tok


def load_or_tokenize_books(cfg: TrainConfig, tok: TextTokenizer, log: Callable[[str], None]) -> tuple[torch.Tensor, list[str]]:
    """All training books as one int32 token tensor (cached), and the books' texts' paths."""
    paths = sorted(Path(cfg.data_dir).glob("*.txt"))
    if not paths:
        raise FileNotFoundError(f"no .txt files in {cfg.data_dir}")
    cache = Path(cfg.out_dir) / "books_tokens.safetensors"
    if cache.exists():
        return load_file(str(cache))["tokens"], [str(p) for p in paths]
    log(f"tokenizing {len(paths)} books from {cfg.data_dir}")
    ids: list[int] = []
    eos = tok.eos_id
    for p in paths:
        text = p.read_text(encoding="utf-8", errors="replace")
        paras = [q for q in text.split("\n\n") if q.strip()]
        for enc in tok.encode_batch(["\n\n".join(paras[i:i + 200]) for i in range(0, len(paras), 200)]):
            ids.extend(enc)
        ids.append(eos)
    tokens = torch.tensor(ids, dtype=torch.int32)
    save_file({"tokens": tokens}, str(cache))
    return tokens, [str(p) for p in paths]


class PasskeySampler:
    """Synthetic passkey prompts of a few segments with per-segment memory write weights."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, tok: TextTokenizer, book_paths: list[str]) -> None:
        self.cfg, self.mcfg, self.tok = cfg, model_cfg, tok
        self.standard = PasskeyPromptBuilder(tok, Haystack.standard(tok))
        self.books = BookWindows(book_paths)
        # every answer tokenizes to the same number of tokens (one per digit). The full stop is
        # a target too: a model that was never shown where the key ends keeps writing digits,
        # and the first integer of " 4785521" is not 47852.
        self.answer_len = len(tok.encode(ANSWER.format(k="12345")))

    def _book_builder(self, rng: random.Random) -> PasskeyPromptBuilder:
        path, sentences = self.books.draw(rng, 40_000, "Nothing.")
        # drawn only when enabled, so older recipes keep their exact data
        if self.cfg.haystack_numbers_prob > 0 and rng.random() < self.cfg.haystack_numbers_prob:
            sentences = sprinkle_numbers(sentences, rng, rate=rng.uniform(0.02, 0.2))
        if self.cfg.haystack_phrases_prob > 0 and rng.random() < self.cfg.haystack_phrases_prob:
            sentences = sprinkle_number_phrases(sentences, rng, rate=rng.uniform(0.01, 0.1))
        if self.cfg.haystack_near_miss_prob > 0 and rng.random() < self.cfg.haystack_near_miss_prob:
            sentences = sprinkle_near_misses(sentences, rng, rate=rng.uniform(0.005, 0.03))
        if self.cfg.haystack_technical_prob > 0 and rng.random() < self.cfg.haystack_technical_prob:
            sentences = mix_into(sentences, rng, share=rng.choice([0.1, 0.3, 0.6, 1.0]))
        return PasskeyPromptBuilder(self.tok, Haystack(self.tok, sentences, path))

    def max_weight(self, step: int) -> float:
        c = self.cfg
        if step < c.amplify_start:
            return 1.0
        frac = min(1.0, (step - c.amplify_start) / max(1, c.amplify_ramp))
        return math.exp(frac * math.log(c.amplify_max))

    def max_segments(self, step: int) -> int:
        """Longest prompt at this step: grows from passkey_segments_start over length_ramp steps."""
        c = self.cfg
        if c.passkey_segments_start <= 0 or c.length_ramp <= 0:
            return c.passkey_segments
        frac = min(1.0, step / c.length_ramp)
        return round(c.passkey_segments_start + frac * (c.passkey_segments - c.passkey_segments_start))

    def _prompt(self, rng: random.Random, builder: PasskeyPromptBuilder, N: int, S: int):
        """One prompt of at most N tokens: ids, spans never amplified, and (position, target) pairs.

        A multi-query prompt asks again after more haystack, so one sequence gives several
        retrievals from memory at different distances (the key may then also be read back
        from an earlier answer, which is retrieval all the same).
        """
        answer = self.tok.encode(ANSWER.format(k=(key := random_key(rng))))
        multi = rng.random() < self.cfg.multi_query_prob
        room = N - len(answer)
        lo = builder.overhead() + 8
        # a straddling answer needs up to a segment of filler tokens to move it onto a boundary
        cross = not multi and rng.random() < self.cfg.answer_cross_prob and room - S >= lo
        if cross:
            room -= S
        target_len = rng.randint(lo, max(lo, room // 2)) if multi else rng.randint(max(lo, room - S), room)
        plan = builder.plan(target_len, rng.random())
        while plan.total_tokens > room:  # rounding overshoot: ask for less haystack
            target_len -= plan.total_tokens - room + 4
            plan = builder.plan(target_len, plan.depth)
        ids = builder.build(plan, key)
        hay = builder.haystack
        q_start = plan.question_start
        if cross:
            # Streaming starts a fresh segment wherever the length puts it, so an answer may
            # lose the question and its first digits from local attention mid-way (a
            # million-token prompt did: " 1534." for 15346) and must go on from memory.
            # Filler tokens before the question's line put a boundary after answer token j.
            j = rng.randint(1, len(answer) - 1)
            d = -(len(ids) + j) % S
            filler = [t for chunk in hay.iter_chunks(rng.randrange(len(hay.sentences)), S) for t in chunk][:d]
            cut = q_start - len(builder.nl_ids)
            ids = ids[:cut] + filler + ids[cut:]
            q_start += d
        n_prompt = len(ids)
        ids = ids + answer
        protected = [(0, len(builder.task_ids) + 1), (plan.key_start, plan.key_start + plan.key_len),
                     (q_start, len(ids))]
        targets = [(n_prompt - 1 + j, a) for j, a in enumerate(answer)]
        while multi:
            n = rng.randint(0, max(1, hay.sentences_within(2 * S)))
            start = rng.randrange(len(hay.sentences))
            filler = [t for chunk in hay.iter_chunks(start, n) for t in chunk]
            head = builder.nl_ids + filler + builder.nl_ids + builder.question_ids
            if len(ids) + len(head) + len(answer) > N:
                break
            q_end = len(ids) + len(head)
            protected.append((q_end - len(builder.question_ids), q_end + len(answer)))
            targets += [(q_end - 1 + j, a) for j, a in enumerate(answer)]
            ids = ids + head + answer
        n_real = len(ids)
        return ids + [self.tok.pad_id] * (N - n_real), protected, targets, n_real

    def copy_local_share(self, step: int) -> float:
        c = self.cfg
        frac = min(1.0, step / c.copy_local_ramp) if c.copy_local_ramp > 0 else 1.0
        return c.copy_local_start + frac * (c.copy_local_end - c.copy_local_start)

    def copy_batch(self, rng: random.Random, step: int = 0):
        """Digit strings said again after some haystack: dense training for ordered recall.

        A passkey is five digit tokens, so answering it is five chained lookups: each digit
        must be found from the one before it (induction), not just "the digits near the key"
        (which is all the answer loss alone taught the first model). Here every digit of the
        repeat but its first is a target, the repeat sits in the same segment or several
        segments later (so in local attention or in memory), and strings run to ~20 digits,
        so a digit's predecessor alone is ambiguous and the model must use the position too.
        Returns tokens [B, N], target positions and targets.
        """
        S = self.mcfg.segment_len
        N = self.cfg.copy_segments * S
        seqs, pos, tgt = [], [], []
        for b in range(self.cfg.batch_copy):
            builder = self._book_builder(rng) if rng.random() < self.cfg.book_haystack_prob else self.standard
            hay = builder.haystack
            ids: list[int] = []
            while True:
                digits = self.tok.encode(" " + "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 20))))
                local = rng.random() < self.copy_local_share(step) and 2 * len(digits) <= S
                if local and (len(ids) % S) + 2 * len(digits) > S:
                    # start the pair at the next segment boundary so both copies share a segment
                    pad = S - len(ids) % S
                    ids += [t for chunk in hay.iter_chunks(rng.randrange(len(hay.sentences)), pad) for t in chunk][:pad]
                room = N - len(ids) - 2 * len(digits)
                if room < 0:
                    break
                # a local pair stays inside the current segment; the others reach back anywhere
                gap = rng.randint(0, S - (len(ids) % S) - 2 * len(digits) if local else room)
                filler: list[int] = []
                for chunk in hay.iter_chunks(rng.randrange(len(hay.sentences)), 10 ** 6):
                    if len(filler) + len(chunk) > gap:
                        break
                    filler += chunk
                first = len(ids) + len(digits) + len(filler)
                # predict digit j+1 from the repeat's digit j (the leading space and first digit are free)
                for j in range(1, len(digits) - 1):
                    pos.append((b, first + j))
                    tgt.append(digits[j + 1])
                ids += digits + filler + digits
            seqs.append(ids + [self.tok.pad_id] * (N - len(ids)))
        return torch.tensor(seqs), torch.tensor(pos), torch.tensor(tgt)

    def batch(self, rng: random.Random, step: int):
        """Returns tokens [B, N], write weights [B, N/S], answer positions and targets, real lengths [B]."""
        S = self.mcfg.segment_len
        # the shortest prompt (task line, key line, question, answer) must fit
        min_seg = -(-(self.standard.overhead() + 8 + 6) // S)
        n_seg = rng.randint(min_seg, max(min_seg, self.max_segments(step)))
        N = n_seg * S
        wmax = self.max_weight(step)
        seqs, weights, pos, tgt, lengths = [], [], [], [], []
        for b in range(self.cfg.batch_passkey):
            builder = self._book_builder(rng) if rng.random() < self.cfg.book_haystack_prob else self.standard
            ids, protected, targets, n_real = self._prompt(rng, builder, N, S)
            seqs.append(ids)
            lengths.append(n_real)
            for p, t in targets:
                pos.append((b, p))
                tgt.append(t)
            # segments holding nothing but haystack may stand for a much longer haystack
            w = []
            amp = wmax > 1 and rng.random() < self.cfg.amplify_prob
            base = math.exp(rng.uniform(0, math.log(wmax))) if amp else 1.0
            for i in range(n_seg):
                lo, hi = i * S, (i + 1) * S
                pure = all(hi <= a or lo >= e for a, e in protected)
                w.append(base * rng.uniform(0.5, 1.5) if (pure and amp) else 1.0)
            weights.append(w)
        return (torch.tensor(seqs), torch.tensor(weights, dtype=torch.float32),
                torch.tensor(pos), torch.tensor(tgt), torch.tensor(lengths))


# ----------------------------------------------------------------------------- optimisation

def build_optimizer(model: InfiniTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("gate"):
            gates.append(p)
        elif p.dim() < 2 or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        # gates: their own, larger rate and no decay, or they barely leave their start
        {"params": gates, "weight_decay": 0.0, "lr_mult": cfg.gate_lr_mult},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def cosine_lr(step: int, lr: float, warmup: int, steps: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to lr * min_ratio at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)


def save_train_state(path: Path, model: InfiniTransformer, opt: torch.optim.AdamW, step: int,
                     cfg: TrainConfig, record: dict) -> None:
    """Model and optimizer moments in safetensors (never a pickle), written atomically."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            tensors[f"opt.{i}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    meta = {"step": str(step), "model_config": model.config.to_json(), "train_config": cfg.to_json(),
            "record": json.dumps(record)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


# Settings that steer a run without changing what it learns: a resumed run may change them.
# `steps` is among them so a finished run can be extended; its LR schedule then follows the new length.
RUN_CONTROL_FIELDS = frozenset({"out_dir", "threads", "stop_at", "eval_every", "save_every", "steps"})


def resume_config_mismatch(saved_json: str, cfg: TrainConfig) -> list[str]:
    """The settings (other than run control) in which cfg differs from the run saved in a state file.

    A state written under another config would otherwise be resumed silently, and the run would
    be neither the saved one nor the asked-for one. Fields the saved run predates count at
    their default, so a state from before a setting existed still resumes.
    """
    saved = json.loads(saved_json)
    defaults = TrainConfig()
    diffs = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUN_CONTROL_FIELDS:
            continue
        before = saved.get(f.name, getattr(defaults, f.name))
        now = getattr(cfg, f.name)
        if before != now:
            diffs.append(f"{f.name} {before!r} -> {now!r}")
    return diffs


def check_resumable(path: Path, cfg: TrainConfig) -> None:
    """Refuse (InputError) a state saved under a different config; reads the header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata().get("train_config")
    diffs = resume_config_mismatch(saved, cfg) if saved else []
    if diffs:
        raise InputError(f"{path}: saved by a run with other settings ({'; '.join(diffs)}); "
                         f"use a new out_dir, or delete {path.name} to start this run afresh")


def load_train_state(path: Path, model: InfiniTransformer, opt: torch.optim.AdamW) -> tuple[int, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if any(k.endswith((".attn.wq.weight", ".ffn.w1.weight")) for k in tensors):
        # the weights would load (the model fuses them), but the optimizer's moments are
        # stored per parameter of the old layout and would be matched to the wrong ones
        raise InputError(f"{path}: saved before the projections were fused (wq/wk/wv, w1/w3); it cannot be resumed "
                         "exactly: finish the run with an earlier infini, or delete it to start afresh")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"opt.{i}.exp_avg"], "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"],
                            "step": tensors[f"opt.{i}.step"].reshape(())}
    return int(meta["step"]), json.loads(meta.get("record", "{}"))


def _init_weights_from(model: InfiniTransformer, path: Path, reset_gates: bool) -> None:
    """Copy a float checkpoint's weights into a fresh run (a new stage of a curriculum).

    reset_gates: a layer whose gates settled on memory has all but switched its local
    attention off, and a nearly closed gate gets almost no gradient; resetting them lets a
    new skill (in-context copying) form in local attention and be moved into memory.
    """
    from ..checkpoint import load_checkpoint
    from ..registry import resolve_model

    loaded = load_checkpoint(resolve_model(path), dtype=torch.float32)
    # the memory rule and the segment may differ: neither has weights of its own (a delta run
    # from a linear model; longer segments, so that more of a short document is in local attention)
    same = dataclasses.replace(loaded.header.config, memory_rule=model.config.memory_rule,
                               segment_len=model.config.segment_len)
    if same != model.config:
        raise ValueError(f"{path}: its model config differs from this run's preset")
    weights = loaded.model.state_dict()
    if reset_gates:
        weights = {k: torch.full_like(v, model.config.gate_init) if k.endswith("gate") else v for k, v in weights.items()}
    model.load_state_dict(weights)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def eval_passkey(model: InfiniTransformer, tok: TextTokenizer, builder: PasskeyPromptBuilder,
                 lengths: list[int], trials: int, seed: int) -> dict[str, float]:
    """Exact-key accuracy on real (not amplified) prompts, depths spread over each length."""
    rng = random.Random(seed)
    out = {}
    model.eval()
    for n in lengths:
        hits = 0
        for t in range(trials):
            key = random_key(rng)
            plan = builder.plan(n, t / max(1, trials - 1))
            ids = builder.build(plan, key)
            state = StreamState.empty(model.config, device=next(model.parameters()).device)
            gen = list(generate(model, state, ids, 7))
            hits += first_integer(tok.decode(gen)) == key
        out[str(n)] = hits / trials
    model.train()
    return out


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, log: Callable[[str], None] = print, stop: Optional[Callable[[], bool]] = None,
          device: torch.device = torch.device("cpu")) -> Path:
    """Train (or resume) in cfg.out_dir; returns the path of the final float checkpoint.

    Ctrl-C saves the current step's state before it stops, so nothing is lost.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.safetensors"
    if state_path.exists():
        check_resumable(state_path, cfg)   # before the tokenizer, the books and the weights: fail fast
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mcfg = preset(cfg.preset)
    tok = load_or_train_tokenizer(cfg, mcfg.vocab_size, log)
    mcfg = dataclasses.replace(mcfg, vocab_size=tok.vocab_size)
    if cfg.memory_rule:
        mcfg = dataclasses.replace(mcfg, memory_rule=cfg.memory_rule)
    if cfg.segment_len:
        mcfg = dataclasses.replace(mcfg, segment_len=cfg.segment_len)
    books, book_paths = load_or_tokenize_books(cfg, tok, log)
    torch.manual_seed(cfg.seed)
    model = InfiniTransformer(mcfg).init_weights(cfg.seed).to(device)
    if cfg.init_from:
        _init_weights_from(model, Path(cfg.init_from), cfg.reset_gates)
    opt = build_optimizer(model, cfg)
    step, record = 0, {"tokens_seen": 0, "seconds": 0.0, "evals": []}
    if state_path.exists():
        step, record = load_train_state(state_path, model, opt)
        log(f"resumed from {state_path} at step {step}")
    (out / "train_config.json").write_text(cfg.to_json())
    sampler = PasskeySampler(cfg, mcfg, tok, book_paths)
    from .babilong_data import make_sampler

    babi = make_sampler(cfg, tok, mcfg.segment_len, book_paths)
    eval_builder = PasskeyPromptBuilder(tok, Haystack.standard(tok))
    logf = (out / "log.jsonl").open("a")
    model.train()
    t_last = time.time()
    try:
        step = _train_loop(cfg, model, opt, step, record, sampler, eval_builder, tok, books, logf, state_path, log,
                           stop, device, t_last, babi)
    except KeyboardInterrupt:
        save_train_state(state_path, model, opt, record.get("steps_done", step), cfg, record)
        log(f"interrupted: saved {state_path} at step {record.get('steps_done', step)}; run the same command to resume")
        raise
    final = out / "model.safetensors"
    from ..checkpoint import save_checkpoint

    record.update({"steps": step, "train_config": dataclasses.asdict(cfg)})
    save_checkpoint(final, model, tok, training=record)
    log(f"wrote {final}")
    return final


def _babi_loss(model: InfiniTransformer, batch, device, per_task: Optional[dict] = None
               ) -> tuple[torch.Tensor, float, int]:
    """Answer loss of a BABILong batch and its exact-answer share (teacher-forced).

    per_task: filled with {task: [correct, total]} when given."""
    toks, pos, tgt, tasks = batch
    toks, pos, tgt = toks.to(device), pos.to(device), tgt.to(device)
    h = train_forward(model, toks)
    logits = model.hidden_to_logits(h[pos[:, 0], pos[:, 1]])
    per_sample = torch.zeros(toks.shape[0], device=device).index_add_(
        0, pos[:, 0], (logits.argmax(-1) != tgt).float())
    if per_task is not None:
        for task, wrong in zip(tasks, per_sample.tolist()):
            cell = per_task.setdefault(task, [0, 0])
            cell[0] += int(wrong == 0)
            cell[1] += 1
    return F.cross_entropy(logits, tgt), (per_sample == 0).float().mean().item(), toks.numel()


@torch.no_grad()
def eval_babilong(model: InfiniTransformer, babi_valid, segments: list[int], n: int, seed: int) -> dict:
    """Teacher-forced exact answers on the validation stories at fixed document lengths
    (0: the facts alone), overall and by task."""
    model.eval()
    out: dict = {}
    for k in segments:
        rng = random.Random(seed + k)
        per_task: dict = {}
        _, acc, _ = _babi_loss(model, babi_valid.batch(rng, 0, n, segments=k), next(model.parameters()).device,
                               per_task)
        out[f"babi_{k}seg"] = round(acc, 3)
        out[f"babi_{k}seg_tasks"] = {t: round(c / max(1, m), 2) for t, (c, m) in sorted(per_task.items())}
    model.train()
    return out


def babi_eval_lengths(cfg: TrainConfig) -> list[int]:
    return [int(x) for x in cfg.babi_eval_segments.split(",") if x.strip()]


def _train_loop(cfg, model, opt, step, record, sampler, eval_builder, tok, books, logf, state_path, log, stop,
                device, t_last, babi=None) -> int:
    S = model.config.segment_len
    text_len = cfg.text_segments * S
    record["steps_done"] = step
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while step < last:
        if stop is not None and stop():
            break
        # data depends only on (seed, step): a resumed run sees exactly what it would have
        rng = random.Random(cfg.seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]

        starts = torch.randint(0, books.numel() - text_len - 1, (cfg.batch_text,), generator=gen)
        window = torch.stack([books[s:s + text_len + 1] for s in starts.tolist()]).long().to(device)
        h = train_forward(model, window[:, :-1])
        loss_text = F.cross_entropy(model.hidden_to_logits(h).flatten(0, 1), window[:, 1:].flatten())

        loss_pk, exact, toks = torch.zeros((), device=device), 0.0, torch.zeros(0)
        if cfg.batch_passkey > 0:
            toks, weights, pos, tgt, lengths = (t.to(device) for t in sampler.batch(rng, step))
            h = train_forward(model, toks, weights)
            logits = model.hidden_to_logits(h[pos[:, 0], pos[:, 1]])
            loss_pk = F.cross_entropy(logits, tgt)
            exact = (logits.argmax(-1) == tgt).view(-1, sampler.answer_len).all(-1).float().mean().item()
        if cfg.batch_passkey > 0 and cfg.passkey_lm_weight > 0:
            # every real next token of the prompt: the key line's repeat and the answers are
            # copies, so this is dense copy signal on top of the answer loss
            real = torch.arange(toks.shape[1] - 1, device=device)[None, :] < (lengths[:, None] - 1)
            lm_logits = model.hidden_to_logits(h[:, :-1][real])
            loss_pk = loss_pk + cfg.passkey_lm_weight * F.cross_entropy(lm_logits, toks[:, 1:][real])

        loss = loss_text + cfg.passkey_loss_weight * loss_pk
        babi_acc, n_babi, loss_babi = None, 0, None
        if babi is not None:
            lb, babi_acc, n_babi = _babi_loss(model, babi.batch(rng, step, cfg.batch_babi), device)
            loss = loss + cfg.babi_loss_weight * lb
            loss_babi, babi_acc = round(lb.item(), 4), round(babi_acc, 3)
        copy_acc, n_copy = None, 0
        if cfg.batch_copy > 0:
            ctoks, cpos, ctgt = (t.to(device) for t in sampler.copy_batch(rng, step))
            hc = train_forward(model, ctoks)
            clogits = model.hidden_to_logits(hc[cpos[:, 0], cpos[:, 1]])
            loss = loss + cfg.copy_weight * F.cross_entropy(clogits, ctgt)
            copy_acc = round((clogits.argmax(-1) == ctgt).float().mean().item(), 3)
            n_copy = ctoks.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip).item()
        opt.step()
        step += 1
        record["steps_done"] = step
        now = time.time()
        n_tok = window.numel() + toks.numel() + n_copy + n_babi
        record["tokens_seen"] += n_tok
        record["seconds"] += now - t_last
        row = {"step": step, "loss_text": round(loss_text.item(), 4), "loss_passkey": round(loss_pk.item(), 4),
               "passkey_exact": round(exact, 3), "copy_acc": copy_acc, "loss_babi": loss_babi,
               "babi_exact": babi_acc, "lr": lr, "grad_norm": round(gnorm, 3),
               "max_weight": round(sampler.max_weight(step), 1), "tok_s": round(n_tok / (now - t_last)),
               "gates": [round(x, 3) for x in model.gates().mean(1).tolist()]}
        t_last = now
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["eval_passkey"] = eval_passkey(model, tok, eval_builder, [4 * S, 1024, 4096], 6, seed=1234)
            if babi is not None:
                row["eval_passkey"].update(eval_babilong(model, babi.valid(), babi_eval_lengths(cfg), 100, seed=4321))
            record["evals"].append({"step": step, **row["eval_passkey"]})
            t_last = time.time()
        logf.write(json.dumps(row) + "\n")
        logf.flush()
        log(json.dumps(row))
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_train_state(state_path, model, opt, step, cfg, record)
    save_train_state(state_path, model, opt, step, cfg, record)
    return step
