"""Teaching a converted writer to read its memory, second try: low-rank adapters on its queries
and keys, trained with its gates, backpropagating through the memory.

Gates alone (writer_memory.py) cannot make the pretrained queries and keys retrieve through a
linear memory: the memory is written from the keys before RoPE and read with the queries before
RoPE, a product the pretrained model never used. Here each layer's fused QKV projection gets a
low-rank update on its query and key rows (`QKAdapter`: wqkv(x) + [B A x, 0], B starting at
zero, so the writer starts exactly as converted), and a step streams a two-segment document
with the gradient flowing from the second segment's loss through the memory written by the
first (the first segment's keys, so the write side learns too, unlike the gates-only run).

Documents alternate (book_every): a passkey prompt whose key is in the first segment and whose
question ends the second, the loss on the key's digits after the question plus the language
loss of both segments; and a two-segment window of book text, its language loss (so the writer
keeps writing). Resumable as writer_memory.py: the trainables, the optimizer, the step and the
random state are saved after each document in `out_dir`; `adapters.safetensors` holds the
adapters and the gates (apply_adapters puts them into a loaded writer).
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
from torch import nn

from ..memory import StreamState, commit_segment
from ..model import InfiniTransformer
from ..quantize import prompt_dtype
from ..tasks.passkey_prompt import PasskeyPromptBuilder
from ..tokenizer import TextTokenizer
from .train import cosine_lr
from .writer_memory import book_documents, gate_names, gate_params, resume_or_start

MIN_LR_RATIO = 0.1


@dataclass
class WriterAdapterConfig:
    checkpoint: str = ""                        # the converted writer (float or int8 file)
    out_dir: str = "runs/writer-adapters"
    data_dir: str = "../shared/data/books/train"
    steps: int = 180                            # optimizer steps, one two-segment document each
    rank: int = 8                               # of each layer's query and key update
    lr: float = 2e-3                            # adapters
    gate_lr: float = 0.05
    gate_start: float = -4.0                    # sigmoid 1.8%, as the gates-only run
    warmup: int = 10
    book_every: int = 3                         # every 3rd document is book text, the rest passkeys
    seed: int = 0
    bf16: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


class QKAdapter(nn.Module):
    """A fused QKV projection with a low-rank update on its query and key rows."""

    def __init__(self, base: nn.Module, in_features: int, qk_rows: int, v_rows: int, rank: int,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.base = base
        self.v_rows = v_rows
        self.A = nn.Parameter(torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features))
        self.B = nn.Parameter(torch.zeros(qk_rows, rank))  # zero: the writer starts as converted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))
        return self.base(x) + F.pad(delta, (0, self.v_rows))


def add_qk_adapters(model: InfiniTransformer, rank: int, seed: int = 0) -> list[nn.Parameter]:
    """Wrap every layer's wqkv in a QKAdapter (once); returns the adapters' parameters."""
    cfg = model.config
    qk, v = (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    params: list[nn.Parameter] = []
    gen = torch.Generator().manual_seed(seed)  # the same start for a run and its resumption
    for block in model.layers:
        attn = block.attn
        if not isinstance(attn.wqkv, QKAdapter):
            attn.wqkv = QKAdapter(attn.wqkv, cfg.d_model, qk, v, rank, gen).to(model.lm_head.weight.device)
        params += [attn.wqkv.A, attn.wqkv.B]
    return params


def adapter_names(model: InfiniTransformer) -> list[str]:
    return [f"layers.{i}.attn.wqkv.{m}" for i in range(len(model.layers)) for m in ("A", "B")]


def save_adapters(model: InfiniTransformer, path: Path) -> None:
    adapters = [p for b in model.layers for p in (b.attn.wqkv.A, b.attn.wqkv.B)]
    tensors = {n: p.detach().float().cpu().contiguous() for n, p in zip(adapter_names(model), adapters)}
    tensors |= {n: g.detach().float().cpu().contiguous() for n, g in zip(gate_names(model), gate_params(model))}
    save_file(tensors, str(path), metadata={"what": "infini writer query/key adapters and gates"})


def apply_adapters(model: InfiniTransformer, path: Path) -> None:
    """Put adapters and gates saved by save_adapters into a loaded writer (one-line errors)."""
    tensors = load_file(str(path))
    names = adapter_names(model) + gate_names(model)
    if sorted(tensors) != sorted(names):
        raise ValueError(f"{path}: holds {len(tensors)} tensors, not this model's {len(names)} adapters and gates")
    rank = tensors[names[0]].shape[0]
    add_qk_adapters(model, rank)
    targets = [p for b in model.layers for p in (b.attn.wqkv.A, b.attn.wqkv.B)] + gate_params(model)
    with torch.no_grad():
        for name, p in zip(names, targets):
            t = tensors[name]
            if t.shape != p.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))


def passkey_document(builder: PasskeyPromptBuilder, seg: int, rng: random.Random) -> tuple[list[int], int]:
    """A passkey prompt and its answer whose key lies in the first `seg` tokens and whose question
    and answer end the second segment; returns (ids, where the answer starts)."""
    question = len(builder.question_ids) + 2 * len(builder.nl_ids)
    if seg < 4 * (question + builder.key_len):
        raise ValueError(f"segments of {seg} tokens are too short for passkey documents")
    for _ in range(1000):  # the haystack comes in whole sentences: a plan may miss, the next one fits
        rest = rng.randrange(question, seg - question - builder.key_len)  # the second segment, before the answer
        plan = builder.plan(seg + rest, rng.uniform(0.0, 0.8 * seg / (seg + rest)))
        key = str(rng.randint(10000, 99999))
        ids = builder.build(plan, key)
        answer = builder.tok.encode(f" {key}.")
        if (plan.key_start + plan.key_len <= seg <= plan.question_start
                and len(ids) + len(answer) <= 2 * seg):
            return ids + answer, len(ids)
    raise ValueError(f"no passkey document fits two segments of {seg} tokens with this haystack")


def two_segment_loss(model: InfiniTransformer, ids: torch.Tensor, answer_start: Optional[int] = None) -> torch.Tensor:
    """Language loss of both segments of ids [1, N] (seg < N <= 2 seg), streamed with the memory
    written after the first, the graph kept through the write; plus, with answer_start, the
    loss of the answer's tokens (from answer_start on) alone."""
    seg = model.config.segment_len
    state = StreamState.empty(model.config, 1, ids.device, torch.float32)
    h1, state = model(ids[:, :seg], state, logits="hidden")
    state = commit_segment(state, model.config.memory_rule)
    h2, _ = model(ids[:, seg:-1], state, logits="hidden")
    logits = model.hidden_to_logits(torch.cat((h1, h2), dim=1)).float()[0]
    targets = ids[0, 1:]
    loss = F.cross_entropy(logits, targets)
    if answer_start is not None:
        loss = loss + F.cross_entropy(logits[answer_start - 1:], targets[answer_start - 1:])
    return loss


def train_adapters(model: InfiniTransformer, tok: TextTokenizer, builder: PasskeyPromptBuilder,
                   cfg: WriterAdapterConfig, log: Callable[[str], None] = print,
                   stop: Optional[Callable[[], bool]] = None) -> Path:
    """Train the adapters and gates per cfg, resuming from cfg.out_dir if a run is there."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = add_qk_adapters(model, cfg.rank, cfg.seed)
    gates = gate_params(model)
    for p in adapters + gates:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": adapters, "lr": cfg.lr, "base": cfg.lr},
                            {"params": gates, "lr": cfg.gate_lr, "base": cfg.gate_lr}], eps=1e-10)
    state_path, rng = out / "state.pt", random.Random(cfg.seed)
    step = resume_or_start(out, cfg, adapters + gates, gates, opt, rng, "params", log)
    model.train()
    books = sorted(Path(cfg.data_dir).glob("*.txt"))
    use_bf16 = cfg.bf16 and (model.lm_head.weight.device.type == "cuda" or prompt_dtype() == torch.bfloat16)
    seg = model.config.segment_len
    device = model.lm_head.weight.device
    logf = (out / "log.jsonl").open("a")
    while step < cfg.steps and not (stop and stop()):
        t0 = time.perf_counter()
        book = step % cfg.book_every == cfg.book_every - 1
        if book:
            ids, answer_start = next(book_documents(books, tok, 2 * seg + 1, rng)).to(device), None
        else:
            doc, answer_start = passkey_document(builder, seg, rng)
            ids = torch.tensor([doc], device=device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, group["base"], cfg.warmup, cfg.steps, MIN_LR_RATIO)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = two_segment_loss(model, ids, answer_start)
        loss.backward()
        opt.step()
        step += 1
        g = torch.stack([torch.sigmoid(p.detach()) for p in gates])
        rec = {"step": step, "kind": "book" if book else "passkey", "loss": round(loss.item(), 4),
               "gate_mean": round(g.mean().item(), 5), "gate_max": round(g.max().item(), 5),
               "s": round(time.perf_counter() - t0, 2)}
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        log(f"step {step} ({rec['kind']}): loss {rec['loss']:.3f}; gates mean {rec['gate_mean']:.4f} "
            f"max {rec['gate_max']:.4f}; {rec['s']} s")
        torch.save({"config": dataclasses.asdict(cfg), "params": [p.detach().clone() for p in adapters + gates],
                    "opt": opt.state_dict(), "step": step, "rng": rng.getstate()}, state_path)
        save_adapters(model, out / "adapters.safetensors")
    logf.close()
    model.eval()
    return out / "adapters.safetensors"
