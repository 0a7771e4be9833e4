"""Streaming: pieces equal whole, cached decoding equals recomputation, constant state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from infini_cli.config import preset
from infini_cli.memory import StreamState, commit_segment
from infini_cli.stream import CopySpans, NgramBan, Sampling, feed, generate, ingest, start_segment_for

from .conftest import random_model

# float32 sums in a different order: logits and states agree to this tolerance
TOL = dict(rtol=1e-4, atol=1e-5)


def feed_in_pieces(model, tokens, piece):
    state = StreamState.empty(model.config)
    outs = []
    for i in range(0, len(tokens), piece):
        out, state = feed(model, state, tokens[i:i + piece])
        outs.append(out)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("name", ["tiny", "tiny-delta"])
def test_pieces_of_any_size_equal_whole(name):
    cfg = preset(name)
    model = random_model(cfg, seed=1)
    S = cfg.segment_len
    tokens = torch.randint(0, cfg.vocab_size, (5 * S + 3,), generator=torch.Generator().manual_seed(2))
    whole, ref = feed(model, StreamState.empty(cfg), tokens)
    for piece in (1, 7, S, S + 1):
        got, state = feed_in_pieces(model, tokens, piece)
        torch.testing.assert_close(got, whole, **TOL)
        assert state.tokens_seen == ref.tokens_seen == len(tokens)
        assert state.segments_written == ref.segments_written == 5
        for a, b in zip(state.M + state.z + state.k_local + state.v_local, ref.M + ref.z + ref.k_local + ref.v_local):
            torch.testing.assert_close(a, b, **TOL)


def test_ingest_regroups_chunks_and_equals_feed():
    cfg = preset("tiny")
    model = random_model(cfg, seed=3)
    tokens = torch.randint(0, cfg.vocab_size, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    _, ref = feed(model, StreamState.empty(cfg), tokens)
    chunks = [tokens[i:i + 13] for i in range(0, len(tokens), 13)]
    seen = []
    state = ingest(model, StreamState.empty(cfg), chunks, on_tokens=seen.append)
    assert sum(seen) == len(tokens)
    for a, b in zip(state.M + state.k_local, ref.M + ref.k_local):
        torch.testing.assert_close(a, b, **TOL)


def test_cached_decoding_equals_recomputation():
    """Each greedy token from the cached stream equals argmax of a from-scratch pass."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=4)
    prompt = torch.randint(0, cfg.vocab_size, (2 * cfg.segment_len - 3,), generator=torch.Generator().manual_seed(4)).tolist()
    generated = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=10))
    seq = list(prompt)
    for tok in generated:
        logits, _ = feed(model, StreamState.empty(cfg), seq)  # recompute everything, crossing a segment boundary
        assert int(logits[0, -1].argmax()) == tok
        seq.append(tok)


def test_a_question_that_would_be_cut_starts_a_segment_and_decoding_equals_recomputation():
    cfg = preset("tiny")
    model = random_model(cfg, seed=9)
    S = cfg.segment_len
    gen = torch.Generator().manual_seed(9)
    body = torch.randint(0, cfg.vocab_size, (2 * S + S - 3,), generator=gen).tolist()  # 3 positions left
    question = torch.randint(0, cfg.vocab_size, (4,), generator=gen).tolist()
    _, fed = feed(model, StreamState.empty(cfg), body)
    moved = start_segment_for(model, fed, len(question), reserve=2)
    assert moved.local_len == 0 and moved.segments_written == fed.segments_written + 1
    # the memory got the same tokens it would have got at the boundary, only earlier
    torch.testing.assert_close(moved.z[0], commit_segment(fed, cfg.memory_rule).z[0])
    # where they fit, or where they could not fit even in a whole segment, nothing moves
    assert start_segment_for(model, fed, 1, reserve=1) is fed
    assert start_segment_for(model, fed, S, reserve=1) is fed
    got = list(generate(model, fed, question, max_new_tokens=6, question_tokens=len(question), answer_reserve=2))
    seq = list(question)
    for tok in got:
        logits, _ = feed(model, moved, seq)  # the question from position 0 of a fresh segment
        assert int(logits[0, -1].argmax()) == tok
        seq.append(tok)
    plain = list(generate(model, fed, question, max_new_tokens=6))
    first, _ = feed(model, fed, question)
    assert plain[0] == int(first[0, -1].argmax())


def test_generate_does_not_modify_the_callers_state():
    cfg = preset("tiny")
    model = random_model(cfg, seed=5)
    _, state = feed(model, StreamState.empty(cfg), list(range(20)))
    before = state.clone()
    list(generate(model, state, [1, 2, 3], max_new_tokens=20))
    for a, b in zip(state.M + state.k_local, before.M + before.k_local):
        assert torch.equal(a, b)


def ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def test_ngram_ban_names_the_tokens_that_would_repeat_an_ngram():
    ban, out = NgramBan(3), []
    for t in [5, 6, 7, 5, 6]:
        out.append(t)
        ban.add(out)
    assert ban.banned(out) == [7]  # 5 6 7 was generated: 7 may not follow 5 6 again
    assert ban.banned(out[:-1]) == [6]  # and 6 may not follow 7 5 again
    assert ban.banned([9, 9]) == [] and ban.banned([5]) == []
    with pytest.raises(ValueError):
        NgramBan(1)


@pytest.mark.parametrize("n", [2, 3])
def test_generate_with_no_repeat_ngram_never_repeats_one(n):
    """A tiny random model decoding greedily falls into a loop; with the ban no generated
    n-gram occurs twice, and each token is still the best of those allowed (checked against
    a fresh forward over everything before it)."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=9)
    prompt = [1, 2, 3]
    plain = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=40))
    assert len(set(ngrams(plain, n))) < len(ngrams(plain, n))  # the test's premise: it loops without the ban
    got = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=40, no_repeat_ngram=n))
    assert len(set(ngrams(got, n))) == len(ngrams(got, n))
    for i, t in enumerate(got):
        logits, _ = feed(model, StreamState.empty(cfg), prompt + got[:i], logits="last")
        banned = {g[-1] for g in ngrams(got[:i], n) if list(g[:-1]) == got[:i][len(got[:i]) - n + 1:]}
        allowed = [v for v in range(cfg.vocab_size) if v not in banned]
        assert t == max(allowed, key=lambda v: float(logits[0, -1, v]))


def test_a_banned_first_token_is_never_the_first_and_the_rest_decodes_as_usual():
    """first_ban: the best token not banned starts the answer; from the second token on the
    ban no longer applies (it equals decoding on from the prompt and that first token)."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=9)
    prompt = [1, 2, 3]
    plain = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=6))
    logits, _ = feed(model, StreamState.empty(cfg), prompt, logits="last")
    ranked = logits[0, -1].argsort(descending=True).tolist()
    assert plain[0] == ranked[0]
    banned = ranked[:3]
    got = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=6, first_ban=banned))
    assert got[0] == ranked[3]
    assert got[1:] == list(generate(model, StreamState.empty(cfg), prompt + got[:1], max_new_tokens=5))


def test_copy_spans_allow_only_what_continues_a_span_of_a_source_or_ends():
    spans = CopySpans([[5, 6, 7], [6, 8], []], ends=[0])
    assert spans.allowed() == [5, 6, 7, 8]  # any source token starts a span; an answer is never empty
    spans.add(6)
    assert spans.allowed() == [0, 7, 8]  # 6 is followed by 7 in one source and 8 in the other
    spans.add(7)
    assert spans.allowed() == [0]  # the end of a source: only an end
    spans = CopySpans([[5, 6, 7]], ends=[0])
    spans.add(6)
    spans.add(5)  # not a continuation (a caller that ignored allowed): nothing left but ending
    assert spans.allowed() == [0]
    assert CopySpans([[]], ends=[0]).allowed() == [0]  # nothing to copy: only an end
    # with content tokens named, an end only once one of them is copied (never punctuation alone)
    spans = CopySpans([[5, 6, 7]], ends=[0], content=[6])
    spans.add(5)
    assert spans.allowed() == [6]
    spans.add(6)
    assert spans.allowed() == [0, 7]


@pytest.mark.parametrize("seed", [3, 9])
def test_generate_with_copy_spans_copies_a_span_and_each_token_is_the_best_allowed(seed):
    """What is generated is a span of a source, then an end; each token is the best of those
    allowed (checked against a fresh forward over everything before it)."""
    cfg = preset("tiny")
    model = random_model(cfg, seed=seed)
    prompt, sources, end = [1, 2, 3], [[10, 11, 12, 13, 14, 15], [20, 11, 30]], 0
    got = list(generate(model, StreamState.empty(cfg), prompt, max_new_tokens=10, copy=CopySpans(sources, [end]),
                        stop=lambda out: out[-1] == end))
    body = got[:-1] if got[-1] == end else got
    assert body and any(src[i:i + len(body)] == body for src in sources for i in range(len(src)))
    spans = CopySpans(sources, [end])
    for i, t in enumerate(got):
        logits, _ = feed(model, StreamState.empty(cfg), prompt + got[:i], logits="last")
        assert t == max(spans.allowed(), key=lambda v: float(logits[0, -1, v]))
        spans.add(t)


def test_copying_a_first_ban_holds_unless_it_would_leave_nothing_to_copy():
    cfg = preset("tiny")
    model = random_model(cfg, seed=9)
    run = lambda ban: list(generate(model, StreamState.empty(cfg), [1, 2, 3], max_new_tokens=2,  # noqa: E731
                                    copy=CopySpans([[10, 11]], [0]), first_ban=ban))
    assert run([10])[0] == 11
    assert run([10, 11])[0] in (10, 11)  # never an end first, nor a token outside the sources


def test_sampling_is_deterministic_with_a_seed():
    cfg = preset("tiny")
    model = random_model(cfg, seed=6)
    s = Sampling(temperature=0.8, top_p=0.9, seed=11)
    a = list(generate(model, StreamState.empty(cfg), [1, 2, 3], 15, s))
    b = list(generate(model, StreamState.empty(cfg), [1, 2, 3], 15, s))
    c = list(generate(model, StreamState.empty(cfg), [1, 2, 3], 15, Sampling(0.8, 0.9, seed=12)))
    assert a == b and a != c


def test_state_size_is_constant():
    cfg = preset("tiny")
    model = random_model(cfg, seed=7)
    S = cfg.segment_len
    s10 = ingest(model, StreamState.empty(cfg), [[i % cfg.vocab_size for i in range(10 * S)]])
    s1000 = ingest(model, StreamState.empty(cfg), [[i % cfg.vocab_size for i in range(1000 * S)]])
    assert s10.segments_written == 10 and s1000.segments_written == 1000
    assert s10.nbytes() == s1000.nbytes() == s10.memory_bytes()
    assert s10.memory_bytes() == cfg.memory_state_floats() * 4


@pytest.mark.slow
def test_a_million_random_tokens_leave_no_nan_or_inf():
    # narrow and long-segmented so a million tokens take seconds; the memory still takes 1,024 writes
    cfg = dataclasses.replace(preset("tiny"), d_model=16, n_heads=2, n_kv_heads=1, ffn_dim=32, segment_len=1024)
    model = random_model(cfg, seed=8)
    gen = torch.Generator().manual_seed(8)
    chunks = (torch.randint(0, cfg.vocab_size, (65536,), generator=gen).tolist() for _ in range(16))
    state = ingest(model, StreamState.empty(cfg), chunks)
    assert state.tokens_seen == 1 << 20
    for t in state.M + state.z:
        assert torch.isfinite(t).all()
    logits, _ = feed(model, state, [1, 2, 3])
    assert torch.isfinite(logits).all()
