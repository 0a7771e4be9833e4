"""Model scores of passages that benchmarks measured and the product does not use.

- question_gain: the likelihood of the question after a passage, minus after a neutral line
  (ask's rerank): +0.1 point of SQuAD top-1/top-3 with the bundled model, noise.
- memory_gain: a sentence's likelihood with the document memory, minus without (summarize):
  no gain on SQuALITY dev.

bench_quality.py reports both beside the product's lexical scores (--model-weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from infini_cli.tasks.passages import Passage

if TYPE_CHECKING:
    from infini_cli.checkpoint import LoadedModel
    from infini_cli.memory import StreamState


def _batch_state(state: "StreamState", n: int) -> "StreamState":
    from infini_cli.memory import StreamState

    ex = lambda ts: [t.expand(n, *t.shape[1:]).contiguous() for t in ts]  # noqa: E731
    return StreamState(ex(state.M), ex(state.z), ex(state.k_local), ex(state.v_local),
                       state.tokens_seen, state.segments_written)


def continuation_logprobs(loaded: "LoadedModel", state: "StreamState", contexts: Sequence[list[int]],
                          target: list[int], use_memory: bool = True) -> list[float]:
    """Mean log-probability of `target` after each context, all continuing `state` in one batch.

    Rows are right-padded, so padding never reaches a real token (attention is causal); each
    row gets its own copy of the memory, so a row crossing a segment boundary writes only its
    own tokens.
    """
    import torch

    from infini_cli.stream import feed

    if not target:
        return [0.0] * len(contexts)
    pad = loaded.tokenizer.pad_id or 0
    seqs = [list(c) + list(target) for c in contexts]
    width = max(len(s) for s in seqs)
    toks = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = torch.tensor(s)
    logits, _ = feed(loaded.model, _batch_state(state, len(seqs)), toks, logits="all", use_memory=use_memory)
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    tgt = torch.tensor(target)
    for i, c in enumerate(contexts):
        start = len(c) - 1  # position whose output predicts the first target token
        if start < 0:
            out.append(float("nan"))
            continue
        rows = logp[i, start:start + len(target)]
        out.append(rows.gather(1, tgt.view(-1, 1).to(rows.device)).mean().item())
    return out


def question_gain(loaded: "LoadedModel", state: "StreamState", passages: Sequence[Passage], question: str,
                  max_passage_tokens: int = 96) -> list[float]:
    """Per passage: how much more likely the model finds the question after the passage.

    log p(question | document memory, passage) - log p(question | document memory, a neutral
    line), per question token; the question sits in the local window right after the passage.
    """
    tok = loaded.tokenizer
    q = tok.encode(" " + question.strip())
    contexts = [tok.encode(p.text)[-max_passage_tokens:] + tok.encode("\n") for p in passages]
    contexts.append(tok.encode("\n"))
    lp = continuation_logprobs(loaded, state, contexts, q)
    base = lp[-1]
    return [x - base for x in lp[:-1]]


def memory_gain(loaded: "LoadedModel", state: "StreamState", passages: Sequence[Passage],
                max_tokens: int = 48, batch: int = 64) -> list[float]:
    """Per passage: mean log-likelihood of its tokens with the document's memory minus without.

    A sentence that the memory of the whole document helps to predict is about what the
    document keeps coming back to. The sentence starts a fresh local window in both cases.
    """
    import torch

    from infini_cli.memory import StreamState
    from infini_cli.stream import feed

    tok = loaded.tokenizer
    cfg = loaded.config
    with_mem = StreamState(state.M, state.z, [t[:, :, :0] for t in state.k_local], [t[:, :, :0] for t in state.v_local],
                           state.tokens_seen, state.segments_written)
    empty = StreamState.empty(cfg, 1, loaded.device, loaded.dtype)
    out: list[float] = []
    ids = [tok.encode(p.text)[: min(max_tokens, cfg.segment_len)] for p in passages]
    pad = tok.pad_id or 0
    for b in range(0, len(ids), batch):
        chunk = ids[b:b + batch]
        width = max(2, max(len(x) for x in chunk))
        toks = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, x in enumerate(chunk):
            toks[i, :len(x)] = torch.tensor(x)
        res = []
        for st in (with_mem, empty):
            logits, _ = feed(loaded.model, _batch_state(st, len(chunk)), toks.to(loaded.device), logits="all")
            lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(2, toks[:, 1:].unsqueeze(-1).to(logits.device))
            res.append(lp.squeeze(-1).cpu())
        for i, x in enumerate(chunk):
            n = len(x) - 1
            out.append(float((res[0][i, :n] - res[1][i, :n]).mean()) if n > 0 else 0.0)
    return out
