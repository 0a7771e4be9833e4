"""The one place where loops over segments live: ingest, segment boundaries, decoding.

Tokens are cut at segment boundaries; when the current segment holds segment_len tokens it
is written into the memory and its local keys and values are dropped. Feeding a text in
pieces of any size therefore gives the same logits and state as feeding it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Sequence

import torch

from .decode import Decoder
from .memory import StreamState, Weight, commit_segment
from .model import InfiniTransformer

if TYPE_CHECKING:
    from .decode_compiled import CompiledStep

ProgressFn = Callable[[int], None]


def _as_batch(tokens: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    t = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    return t.to(device)


@torch.inference_mode()
def feed(
    model: InfiniTransformer,
    state: StreamState,
    tokens: torch.Tensor | Sequence[int],
    logits: str = "all",
    use_memory: bool = True,
    write_weight: Weight = None,
) -> tuple[Optional[torch.Tensor], StreamState]:
    """Feed tokens ([T] or [B, T]) into the stream; returns (logits, state).

    logits="all" gives [B, T, vocab]; "last" gives [B, 1, vocab] for the final token;
    "none" gives None. `write_weight` scales every memory write made here (training only).
    """
    device = next(model.parameters()).device
    toks = _as_batch(tokens, device)
    seg = model.config.segment_len
    outs: list[torch.Tensor] = []
    last: Optional[torch.Tensor] = None
    pos, T = 0, toks.shape[1]
    while pos < T:
        room = seg - state.local_len
        n = min(room, T - pos)
        mode = logits
        if logits == "last":
            mode = "last" if pos + n == T else "none"
        out, state = model(toks[:, pos:pos + n], state, logits=mode, use_memory=use_memory)
        if logits == "all":
            outs.append(out)
        elif out is not None:
            last = out
        pos += n
        if state.local_len == seg:
            state = commit_segment(state, model.config.memory_rule, write_weight if use_memory else None)
    if logits == "all":
        if not outs:
            return toks.new_zeros((toks.shape[0], 0, model.config.vocab_size), dtype=torch.float32), state
        return torch.cat(outs, dim=1), state
    return last, state


def train_forward(
    model: InfiniTransformer,
    tokens: torch.Tensor,
    write_weights: Optional[torch.Tensor] = None,
    use_memory: bool = True,
) -> torch.Tensor:
    """Training pass over whole segments with backpropagation through time.

    tokens [B, N] with N a multiple of segment_len; write_weights [B, N / segment_len] scales
    each segment's memory write per sequence (None: all 1). Returns hidden states [B, N, d].
    """
    seg = model.config.segment_len
    B, N = tokens.shape
    if N % seg:
        raise ValueError(f"training length {N} is not a multiple of segment_len {seg}")
    state = StreamState.empty(model.config, B, tokens.device, model.embed.weight.dtype)
    hidden = []
    for i in range(N // seg):
        h, state = model(tokens[:, i * seg:(i + 1) * seg], state, logits="hidden", use_memory=use_memory)
        hidden.append(h)
        if use_memory and i + 1 < N // seg:  # the last write would feed nothing
            w = None if write_weights is None else write_weights[:, i]
            state = commit_segment(state, model.config.memory_rule, w)
    return torch.cat(hidden, dim=1)


@torch.inference_mode()
def ingest(
    model: InfiniTransformer,
    state: StreamState,
    chunks: Iterable[Sequence[int] | torch.Tensor],
    on_tokens: Optional[ProgressFn] = None,
    use_memory: bool = True,
) -> StreamState:
    """Stream token chunks of any length and size through the model at constant memory.

    Chunks are lists of ids (batch 1) or tensors [B, n] (B streams in lockstep). They are
    regrouped into whole segments first so each forward sees as many tokens as it can take
    (larger matrix products), whatever sizes the reader produced. `on_tokens` gets the
    number of positions consumed (per stream).
    """
    seg = model.config.segment_len
    device = next(model.parameters()).device
    pending: list[torch.Tensor] = []
    n_pending = 0
    for chunk in chunks:
        t = chunk if isinstance(chunk, torch.Tensor) else torch.tensor(list(chunk), dtype=torch.long)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.shape[1] == 0:
            continue
        pending.append(t)
        n_pending += t.shape[1]
        room = seg - state.local_len
        if n_pending >= room:
            joined = torch.cat(pending, dim=1)
            n = room + ((n_pending - room) // seg) * seg
            _, state = feed(model, state, joined[:, :n].to(device), logits="none", use_memory=use_memory)
            pending, n_pending = [joined[:, n:]], n_pending - n
            if on_tokens:
                on_tokens(n)
    if n_pending:
        _, state = feed(model, state, torch.cat(pending, dim=1).to(device), logits="none", use_memory=use_memory)
        if on_tokens:
            on_tokens(n_pending)
    return state


def start_segment_for(model: InfiniTransformer, state: StreamState, n_tokens: int, reserve: int) -> StreamState:
    """Let the next n_tokens (a question) and `reserve` tokens after them (its answer) share a segment.

    Where they would not fit in what is left of the current segment but do fit in a whole
    one, the current segment is written to memory now, shorter than usual. Otherwise a
    boundary could fall inside the question or its answer, and the answer would go on from
    the memory alone, which holds no order: after a boundary a passkey answer that had
    written " 80" could not tell which "0" of 80056 it stood at, and wrote " 8056.".
    The memory gets exactly the same tokens either way; only where a segment ends moves.
    """
    seg = model.config.segment_len
    if state.local_len and state.local_len + n_tokens + reserve > seg >= n_tokens + reserve:
        return commit_segment(state, model.config.memory_rule)
    return state


@torch.inference_mode()
def greedy_batch(
    model: InfiniTransformer,
    state: StreamState,
    last_tokens: torch.Tensor,
    max_new_tokens: int,
    use_memory: bool = True,
) -> torch.Tensor:
    """Greedy decoding for B streams in lockstep: feed last_tokens [B], return [B, n] ids."""
    device = next(model.parameters()).device
    tok = last_tokens.view(-1).to(device)
    decoder = Decoder(model, state, use_memory, reserve=max_new_tokens)
    out = []
    for _ in range(max_new_tokens):
        tok = decoder.step(tok).argmax(-1)
        out.append(tok)
    return torch.stack(out, dim=1).cpu()


@dataclass
class Sampling:
    """Greedy when temperature == 0; otherwise temperature and nucleus (top-p) sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None


def sample_next(logits: torch.Tensor, sampling: Sampling, gen: Optional[torch.Generator]) -> int:
    """Pick the next token from logits [vocab]."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < sampling.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_p)
    probs = probs / probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())


class NgramBan:
    """Which next tokens would repeat an n-gram already generated (no_repeat_ngram_size, as
    in BART's decoding): a small writer otherwise loops ("California, California, ...") or
    says a phrase again ("the Trapper's Turn to be Trapped, the Trapper's Turn to be Tra").
    Only the generated tokens count, not the prompt, so copying names and phrases from the
    evidence stays free."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"an n-gram ban needs n >= 2, not {n}")
        self.n = n
        self.followers: dict[tuple[int, ...], set[int]] = {}

    def add(self, out: Sequence[int]) -> None:
        """Record the n-gram that out's last token completed."""
        if len(out) >= self.n:
            self.followers.setdefault(tuple(out[-self.n:-1]), set()).add(out[-1])

    def banned(self, out: Sequence[int]) -> list[int]:
        if len(out) < self.n - 1:
            return []
        return sorted(self.followers.get(tuple(out[len(out) - self.n + 1:]), ()))


class CopySpans:
    """Which next tokens keep what is generated a copy of a span of one of the sources (token
    lists), or end it: a small writer asked for a phrase from its evidence then answers with
    the evidence's own words, never a paraphrase or an invented name. Follows every place in
    the sources where the tokens so far occur; `ends` (end of text, a new line) are allowed
    once a token of `content` is copied (any token where content is None: an answer is never
    empty nor, given the tokens that hold a letter or digit, punctuation alone; sources without
    a token: only ends)."""

    def __init__(self, sources: Sequence[Sequence[int]], ends: Iterable[int],
                 content: Optional[Iterable[int]] = None) -> None:
        self.sources = [list(s) for s in sources if s]
        self.ends = set(ends)
        self.content = set(content) if content is not None else None
        self.active = [(i, j) for i, s in enumerate(self.sources) for j in range(len(s))]
        self.started = False

    def allowed(self) -> list[int]:
        copied = {self.sources[i][j] for i, j in self.active}
        return sorted(copied | self.ends if self.started or not copied else copied)

    def add(self, token: int) -> None:
        """The token was generated: keep the places it continues."""
        self.started = self.started or self.content is None or token in self.content
        self.active = [(i, j + 1) for i, j in self.active
                       if self.sources[i][j] == token and j + 1 < len(self.sources[i])]


@torch.inference_mode()
def generate(
    model: InfiniTransformer,
    state: StreamState,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop: Optional[Callable[[list[int]], bool]] = None,
    use_memory: bool = True,
    question_tokens: int = 0,
    answer_reserve: int = 0,
    logit_bias: Optional[torch.Tensor] = None,
    no_repeat_ngram: int = 0,
    compiled: Optional[CompiledStep] = None,
    first_ban: Sequence[int] = (),
    copy: Optional[CopySpans] = None,
) -> Iterator[int]:
    """Continue the stream: feed the prompt, then yield generated tokens one by one.

    Generated tokens join the current segment like any other; a full segment is written
    into memory, so decoding never runs past the trained positions. With question_tokens,
    the prompt's last question_tokens and answer_reserve new tokens are kept in one
    segment where they fit (start_segment_for). `logit_bias` [vocab] is added to every
    step's logits (a writer leaning towards the words of its evidence). With no_repeat_ngram
    n >= 2, no generated n-gram is generated twice (NgramBan). With `compiled` (a package
    decode_compiled.load_compiled gave for this model), one stream decodes through it. The
    tokens of `first_ban` are never the first one generated. With `copy` (CopySpans), only
    tokens that continue a span of its sources, or end, are generated. The caller's `state` is
    not modified (tensors are replaced, never written in place).
    """
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    gen = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    if question_tokens:
        q = min(question_tokens, len(prompt))
        _, state = feed(model, state, prompt[:len(prompt) - q], logits="none", use_memory=use_memory)
        state = start_segment_for(model, state, q, answer_reserve)
        prompt = prompt[len(prompt) - q:]
    logits, state = feed(model, state, prompt, logits="last", use_memory=use_memory)
    last = logits[0, -1]
    if compiled is not None and compiled.serves(state):
        from .decode_compiled import CompiledDecoder

        decoder: Decoder = CompiledDecoder(compiled, model, state, use_memory, reserve=max_new_tokens)
    else:
        decoder = Decoder(model, state, use_memory, reserve=max_new_tokens)
    del state, logits  # the decoder holds the stream now
    device = last.device
    bias = logit_bias.to(device) if logit_bias is not None else None  # once, not every token
    ban = NgramBan(no_repeat_ngram) if no_repeat_ngram else None
    out: list[int] = []
    for _ in range(max_new_tokens):
        step = last if bias is None else last.float() + bias
        if ban is not None and (banned := ban.banned(out)):
            step = step.float().index_fill(0, torch.tensor(banned, device=device), float("-inf"))
        if copy is not None:
            keep = torch.tensor(copy.allowed(), device=device)
            step = torch.full_like(step, float("-inf"), dtype=torch.float32).index_copy(0, keep, step.float()[keep])
        if first_ban and not out:
            banned = step.float().index_fill(0, torch.tensor(list(first_ban), device=device), float("-inf"))
            # copying, the ban gives way where it would leave nothing to copy
            step = banned if copy is None or bool(torch.isfinite(banned).any()) else step
        tok = sample_next(step, sampling, gen)
        out.append(tok)
        if ban is not None:
            ban.add(out)
        if copy is not None:
            copy.add(tok)
        yield tok
        if stop is not None and stop(out):
            return
        last = decoder.step(torch.tensor([tok], device=device))[0]
