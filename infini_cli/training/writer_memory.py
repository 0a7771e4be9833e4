"""Teaching a converted writer to read its memory: its gates trained on long book text, all
its other weights frozen.

A converted Llama starts local-only (gates at -12: sigmoid 6e-6). Here each document of
`doc_segments` segments streams through the writer as it does in the product (memory written
after each full segment); each segment's language-model loss trains the gates of that
segment's read. Gradients stop at segment boundaries (truncated BPTT): the write side has no
trainable weights, so only how the memory is read can be learnt, and a step costs one
segment's forward and backward whatever the document's length.

The run is resumable: the gates, the optimizer, the step and the documents' random state are
saved after each document in `out_dir`; `gates.safetensors` there holds the gates alone
(apply_gates puts them into a loaded writer).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..memory import StreamState, commit_segment
from ..model import InfiniTransformer
from ..quantize import prompt_dtype
from ..tokenizer import TextTokenizer
from .train import cosine_lr

MIN_LR_RATIO = 0.1  # the learning rate decays to a tenth of cfg.lr


@dataclass
class WriterMemoryConfig:
    checkpoint: str = ""                        # the converted writer (float or int8 file)
    out_dir: str = "runs/writer-gates"
    data_dir: str = "../shared/data/books/train"
    steps: int = 400                            # optimizer steps, one segment each
    doc_segments: int = 8                       # segments per document (8 x 2,048 = 16K tokens)
    gate_start: float = -4.0                    # sigmoid 1.8%: near local-only, yet a gradient
    lr: float = 0.05
    warmup: int = 10
    seed: int = 0
    bf16: bool = True                           # autocast to bfloat16 where the CPU multiplies it natively

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def gate_names(model: InfiniTransformer) -> list[str]:
    return [f"layers.{i}.attn.gate" for i in range(len(model.layers))]


def gate_params(model: InfiniTransformer) -> list[torch.nn.Parameter]:
    return [b.attn.gate for b in model.layers]


def freeze_all_but_gates(model: InfiniTransformer) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    gates = gate_params(model)
    for g in gates:
        g.requires_grad_(True)
    return gates


def save_gates(model: InfiniTransformer, path: Path) -> None:
    tensors = {n: g.detach().float().cpu().contiguous() for n, g in zip(gate_names(model), gate_params(model))}
    save_file(tensors, str(path), metadata={"what": "infini writer gates"})


def apply_gates(model: InfiniTransformer, path: Path) -> None:
    """Put gates saved by save_gates into a loaded model of the same shape (one-line errors)."""
    tensors = load_file(str(path))
    names = gate_names(model)
    if sorted(tensors) != sorted(names):
        raise ValueError(f"{path}: holds {len(tensors)} tensors, not this model's {len(names)} gates")
    with torch.no_grad():
        for name, g in zip(names, gate_params(model)):
            t = tensors[name]
            if t.shape != g.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the model {tuple(g.shape)}")
            g.copy_(t.to(g.dtype))


def segment_losses(model: InfiniTransformer, tokens: torch.Tensor, use_memory: bool = True,
                   on_segment: Optional[Callable[[torch.Tensor], None]] = None, write: bool = True) -> list[float]:
    """Mean next-token loss of each segment of tokens [B, N] (N a multiple of segment_len, or
    one more so that the last segment's last token has a target too), streamed with memory
    written after each segment (or local-only). The last token of a segment predicts the next
    segment's first, as in an unbroken stream.

    on_segment(loss) is called with each segment's loss tensor while its graph is alive
    (training backpropagates there); without it the pass runs under inference_mode.
    write=False never writes the memory (every segment reads an empty one): with use_memory,
    what the gates do without anything remembered, the control for what the memory adds.
    """
    seg = model.config.segment_len
    B, N = tokens.shape
    if N < seg or N % seg > 1:
        raise ValueError(f"{N} tokens are not a whole number of {seg}-token segments (and one more)")
    state = StreamState.empty(model.config, B, tokens.device, torch.float32)
    losses = []
    grad = on_segment is not None
    for i in range(N // seg):
        x = tokens[:, i * seg:(i + 1) * seg]
        target = tokens[:, i * seg + 1:(i + 1) * seg + 1]
        with torch.inference_mode(not grad):
            h, state = model(x, state, logits="hidden", use_memory=use_memory)
            h = h[:, :target.shape[1]]
            loss = F.cross_entropy(model.hidden_to_logits(h).flatten(0, 1).float(), target.flatten())
        if grad:
            on_segment(loss)
            state = state.detach()
        losses.append(loss.item())
        with torch.inference_mode(not grad):
            state = (commit_segment(state, model.config.memory_rule) if use_memory and write
                     else StreamState.empty(model.config, B, tokens.device, torch.float32))
    return losses


def book_documents(paths: list[Path], tok: TextTokenizer, n_tokens: int, rng: random.Random) -> Iterator[torch.Tensor]:
    """Endless [1, n_tokens] windows from random places of random books (a book shorter than a
    window is passed over; a window that tokenizes short widens the next ones)."""
    if not paths:
        raise ValueError("no books to train on")
    chars, misses = n_tokens * 6, 0
    while True:
        text = rng.choice(paths).read_text(encoding="utf-8", errors="replace")
        if len(text) >= chars:
            start = rng.randrange(len(text) - chars + 1)
            ids = tok.encode(text[start:start + chars])
            if len(ids) >= n_tokens:
                misses = 0
                yield torch.tensor([ids[:n_tokens]])
                continue
            chars = int(chars * 1.5)
        misses += 1
        if misses > 8 * len(paths):
            raise ValueError(f"no book in {paths[0].parent} holds a window of {n_tokens} tokens")


def resume_or_start(out: Path, cfg, trained: list[torch.nn.Parameter], gates: list[torch.nn.Parameter],
                    opt: torch.optim.Optimizer, rng: random.Random, key: str, log: Callable[[str], None]) -> int:
    """Go on with the run saved in out/state.pt (the trained parameters under `key`; refused
    if its configuration differs, the step count aside) or start one (the gates at
    cfg.gate_start, out/config.json written); returns the step to go on from."""
    state_path = out / "state.pt"
    if not state_path.exists():
        with torch.no_grad():
            for g in gates:
                g.fill_(cfg.gate_start)
        (out / "config.json").write_text(cfg.to_json())
        return 0
    saved = torch.load(state_path, weights_only=False)
    if saved["config"] != dataclasses.asdict(cfg) | {"steps": saved["config"]["steps"]}:
        raise ValueError(f"{out}: a run with another configuration is there; use another --out")
    with torch.no_grad():
        for p, t in zip(trained, saved[key]):
            p.copy_(t)
    opt.load_state_dict(saved["opt"])
    rng.setstate(saved["rng"])
    log(f"resumed at step {saved['step']}")
    return saved["step"]


def train_gates(model: InfiniTransformer, tok: TextTokenizer, cfg: WriterMemoryConfig,
                log: Callable[[str], None] = print, stop: Optional[Callable[[], bool]] = None) -> Path:
    """Train the gates per cfg, resuming from cfg.out_dir if a run is there; returns the gates' file."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gates = freeze_all_but_gates(model)
    opt = torch.optim.Adam(gates, lr=cfg.lr, eps=1e-10)
    state_path, rng = out / "state.pt", random.Random(cfg.seed)
    step = resume_or_start(out, cfg, gates, gates, opt, rng, "gates", log)
    model.train()

    books = sorted(Path(cfg.data_dir).glob("*.txt"))
    use_bf16 = cfg.bf16 and (model.lm_head.weight.device.type == "cuda" or prompt_dtype() == torch.bfloat16)
    seg = model.config.segment_len
    logf = (out / "log.jsonl").open("a")

    def save() -> None:
        torch.save({"config": dataclasses.asdict(cfg), "gates": [g.detach().clone() for g in gates],
                    "opt": opt.state_dict(), "step": step, "rng": rng.getstate()}, state_path)
        save_gates(model, out / "gates.safetensors")

    while step < cfg.steps and not (stop and stop()):
        # a document is the unit of work (doc_segments steps); the state is saved after each, so
        # a resumed run reads the documents a straight run would
        doc = next(book_documents(books, tok, cfg.doc_segments * seg + 1, rng))
        t0, first_step = time.perf_counter(), step

        def on_segment(loss: torch.Tensor) -> None:
            nonlocal step
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps, MIN_LR_RATIO)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1

        with torch.autocast(model.lm_head.weight.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            losses = segment_losses(model, doc, on_segment=on_segment)
        g = torch.stack([torch.sigmoid(p.detach()) for p in gates])
        rec = {"step": step, "losses": [round(x, 4) for x in losses], "gate_mean": round(g.mean().item(), 5),
               "gate_max": round(g.max().item(), 5), "s_per_step": round((time.perf_counter() - t0) / (step - first_step), 2)}
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        log(f"step {step}: loss by segment {' '.join(f'{x:.3f}' for x in losses)}; gates mean {rec['gate_mean']:.4f} "
            f"max {rec['gate_max']:.4f}; {rec['s_per_step']} s/step")
        save()
    logf.close()
    model.eval()
    return out / "gates.safetensors"
