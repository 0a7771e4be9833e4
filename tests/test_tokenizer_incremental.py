"""Incremental tokenization gives exactly the whole text's ids, and maps every token back
to its page and character offset, whatever the block sizes."""

from __future__ import annotations

import codecs
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, trainers

from infini_cli.incremental import DEFAULT_MAX_HOLD, IncrementalEncoder
from infini_cli.readers import TextChunk, open_document
from infini_cli.tokenizer import TextTokenizer
from tests.conftest import CORPUS

# Pieces chosen to hit the pre-tokenizer's edge cases: whitespace runs of every kind before
# words, contractions, digits, CJK and other text without spaces, emoji (four UTF-8 bytes),
# combining marks, characters Python calls whitespace and the regex does not (\x1c), and the
# special tokens' text, whole and in parts.
PIECES = [
    "the", "committee", " vote", "it", "'s", "'ll", "'", "n't", "1", "2024", " 7", " ", "  ", "   ", "\n", "\n\n",
    "\r\n", "\t", " \n ", "\u3000", "\xa0", "\x1c", "\u2028", "\x85", "中文", "会议", "，", "。", "😀", "é", "e\u0301",
    "ภาษา", ".", "!?", "--", "_", "<|endoftext|>", "<|pad|>", "<|", "|>", "endoftext",
]
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(min_size=1, max_size=3)), max_size=60).map("".join)


def split_points(draw_text, data):
    n = len(draw_text)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=12))))
    return [0, *[c for c in cuts if 0 < c < n], n]


def as_chunks(text, cuts, pages):
    chunks, line = [], 1
    for (a, b), page in zip(itertools.pairwise(cuts), pages):
        chunks.append(TextChunk(text[a:b], page, a, line))
        line += text[a:b].count("\n")
    return chunks


def page_at(chunks, offset):
    for c in chunks:
        if c.char_offset <= offset < c.char_offset + len(c.text):
            return c.page
    raise AssertionError(offset)


def check_stream(tokenizer, text, chunks, max_hold=None):
    encoder = IncrementalEncoder(tokenizer, DEFAULT_MAX_HOLD if max_hold is None else max_hold)
    out = list(encoder.encode_stream(chunks))
    whole = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = [i for c in out for i in c.ids]
    return encoder, out, whole, ids


@settings(max_examples=300, deadline=None)
@given(text=texts, data=st.data())
def test_incremental_ids_equal_whole_text_ids(tokenizer, text, data):
    cuts = split_points(text, data)
    pages = sorted(data.draw(st.lists(st.integers(1, 5), min_size=len(cuts), max_size=len(cuts))))
    chunks = [c for c in as_chunks(text, cuts, pages) if c.text]
    encoder, out, whole, ids = check_stream(tokenizer, text, chunks)
    assert encoder.exact and encoder.inexact_cuts == 0
    assert ids == whole.ids
    # provenance: every token's first character, and the page it lies on
    offsets = [o for c in out for o in c.offsets]
    assert offsets == [s for s, _ in whole.offsets]
    for c in out:
        assert text[c.char_offset:c.char_offset + len(c.text)] == c.text
        for i, off in enumerate(c.offsets):
            assert c.page(i) == page_at(chunks, off)
    assert "".join(c.text for c in out) == text
    assert encoder.tokens == len(ids) and encoder.chars == len(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, block=st.integers(1, 16), enc=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_file_to_tokens_equals_whole_text(tmp_path, tokenizer, text, block, enc):
    """Through the reader: byte blocks split multi-byte characters; the ids do not notice."""
    if not text or "\x00" in text:
        return
    p = tmp_path / "t.txt"
    p.write_bytes(text.encode(enc))
    ids = [i for c in IncrementalEncoder(tokenizer).encode_stream(open_document(p, block_chars=block)) for i in c.ids]
    assert ids == tokenizer.encode(text)


cjk = st.lists(
    st.tuples(st.text(alphabet="会议决定推迟投票直到春天文字中", min_size=1, max_size=8),
              st.sampled_from("，。、！？")),
    min_size=1, max_size=40,
).map(lambda parts: "".join(a + b for a, b in parts))


@settings(max_examples=100, deadline=None)
@given(text=cjk, hold=st.integers(48, 100), data=st.data())
def test_text_without_spaces_is_cut_exactly_at_punctuation(tokenizer, text, hold, data):
    """No whitespace at all: forced cuts at letter/punctuation boundaries stay exact."""
    cuts = split_points(text, data)
    chunks = [c for c in as_chunks(text, cuts, [None] * len(cuts)) if c.text]
    encoder, out, whole, ids = check_stream(tokenizer, text, chunks, max_hold=hold)
    assert encoder.inexact_cuts == 0
    assert ids == whole.ids
    if len(text) > 2 * hold + 64:
        assert len(out) > 1  # forced cuts did happen (there is no whitespace to cut at)


@settings(max_examples=150, deadline=None)
@given(text=texts, hold=st.integers(1, 12), data=st.data())
def test_tiny_hold_is_exact_unless_it_says_so(tokenizer, text, hold, data):
    """With a held tail far too small, a blind cut may change ids: then it must be counted."""
    cuts = split_points(text, data)
    chunks = [c for c in as_chunks(text, cuts, [None] * len(cuts)) if c.text]
    encoder, out, whole, ids = check_stream(tokenizer, text, chunks, max_hold=hold)
    if encoder.inexact_cuts == 0:
        assert ids == whole.ids
    else:
        assert encoder.warnings


def test_held_tail_is_bounded(tokenizer):
    """An endless word: memory stays bounded, blind cuts are counted and reported."""
    encoder = IncrementalEncoder(tokenizer, max_hold=1000)
    for i in range(200):
        encoder.feed("a" * 500, None, i * 500)
        assert len(encoder._buf) <= 1000 + 500
    assert encoder.inexact_cuts > 0 and "no word or punctuation break" in encoder.warnings[0]


def test_hold_is_short_for_ordinary_text(tokenizer):
    encoder = IncrementalEncoder(tokenizer)
    sent = "The committee decided to postpone the vote until the spring meeting. "
    for i in range(100):
        out = encoder.feed(sent, None, i * len(sent))
        assert out is not None and len(encoder._buf) <= len(" meeting. ")


def test_cut_after_whitespace_would_be_wrong(tokenizer):
    """Why the rule cuts *before* whitespace: a cut after a newline run changes the ids."""
    text = "a\n\nb"
    pre = tokenizer.backend.pre_tokenizer.pre_tokenize_str
    pieces = lambda s: [p for p, _ in pre(s)]  # noqa: E731
    assert pieces("a\n\n") + pieces("b") != pieces(text)  # "\n\n" against "\n", "\n": BPE may differ
    chunks = [TextChunk("a\n\n", None, 0, 1), TextChunk("b", None, 3, 3)]
    _, _, whole, ids = check_stream(tokenizer, text, chunks)
    assert ids == whole.ids


def test_position_dependent_tokenizer_is_flagged():
    """A SentencePiece-style normalizer (a '▁' prepended to every encode) cannot be cut exactly."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, show_progress=False))
    encoder = IncrementalEncoder(TextTokenizer(tok))
    assert not encoder.exact and "cannot be cut exactly" in encoder.warnings[0]


def test_token_chunk_pages(tokenizer):
    chunks = [TextChunk("first page text", 1, 0, 1), TextChunk("\n\nsecond page", 2, 15, 1)]
    out = list(IncrementalEncoder(tokenizer).encode_stream(chunks))
    pages = [c.page(i) for c in out for i in range(len(c))]
    offsets = [o for c in out for o in c.offsets]
    assert pages[0] == 1 and pages[-1] == 2
    assert all(p == (1 if o < 15 else 2) for p, o in zip(pages, offsets))
    text_chunks = list(IncrementalEncoder(tokenizer).encode_stream([TextChunk("no pages here", None, 0, 1)]))
    assert text_chunks[0].page(0) is None


def test_utf16_bom_file(tmp_path, tokenizer):
    p = tmp_path / "u16.txt"
    p.write_bytes(codecs.BOM_UTF16_LE + "Grüße, 世界 😀\n".encode("utf-16-le") * 100)
    ids = [i for c in IncrementalEncoder(tokenizer).encode_stream(open_document(p, block_chars=5)) for i in c.ids]
    assert ids == tokenizer.encode("Grüße, 世界 😀\n" * 100)
