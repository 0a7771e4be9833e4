"""Readers: text in blocks with incremental decoding, PDFs page by page, stdin; provenance;
every bad input a one-line InputError naming the file."""

from __future__ import annotations

import os

import codecs
import io
import itertools
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infini_cli.errors import InputError
from infini_cli.readers import PAGE_SEPARATOR, STDIN_NAME, open_document
from tests.pdf_factory import encrypt_pdf, make_blank_pdf, make_pdf, page_text

ENCODINGS = {  # name -> (codec that writes the file, byte-order mark written first)
    "utf-8": ("utf-8", b""),
    "utf-8-bom": ("utf-8", codecs.BOM_UTF8),
    "utf-16-le": ("utf-16-le", codecs.BOM_UTF16_LE),
    "utf-16-be": ("utf-16-be", codecs.BOM_UTF16_BE),
    "utf-32-le": ("utf-32-le", codecs.BOM_UTF32_LE),
}

# Text of every kind: ASCII, accents, CJK, emoji (4 bytes in UTF-8, surrogate pairs in UTF-16),
# combining marks, line breaks of every flavour. No NUL: a NUL in the first block means binary.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("abc xyz\n\r\t.,'") + ["é", "ß", "中", "文", "😀", "\u0301", "\u2028", "\x85"]),
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    ),
    min_size=1,
    max_size=300,
)


def read_all(doc):
    chunks = list(doc)
    return chunks, "".join(c.text for c in chunks)


def check_provenance(chunks, text):
    offset, line = 0, 1
    for c in chunks:
        assert c.char_offset == offset
        assert c.line == line
        assert text[offset:offset + len(c.text)] == c.text
        offset += len(c.text)
        line += c.text.count("\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, block=st.integers(1, 64), enc=st.sampled_from(sorted(ENCODINGS)))
def test_text_roundtrip_any_block_size(tmp_path, text, block, enc):
    codec, bom = ENCODINGS[enc]
    p = tmp_path / "doc.txt"
    p.write_bytes(bom + text.encode(codec))
    doc = open_document(p, block_chars=block)
    assert doc.kind == "text" and doc.total_bytes == p.stat().st_size
    chunks, got = read_all(doc)
    assert got == text  # multi-byte characters split across blocks come out whole
    assert all(c.page is None and 0 < len(c.text) <= block for c in chunks)
    check_provenance(chunks, text)
    assert doc.warnings == []
    assert doc.bytes_read == p.stat().st_size


def test_undecodable_bytes_replaced_and_counted_once(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 400)
    doc = open_document(p, block_chars=7)
    _, text = read_all(doc)
    assert text.count("\ufffd") == 1600 and "caf" in text
    assert len(doc.warnings) == 1
    assert "1600 undecodable bytes" in doc.warnings[0] and "latin1.txt" in doc.warnings[0]


def test_truncated_utf8_at_end_is_replaced(tmp_path):
    p = tmp_path / "cut.txt"
    p.write_bytes("fin 😀".encode()[:-2])
    doc = open_document(p, block_chars=3)
    _, text = read_all(doc)
    assert text == "fin \ufffd" and len(doc.warnings) == 1


def test_chunks_are_lazy_and_bounded():
    """An endless stdin: the reader yields at once and never reads more than a block ahead."""

    class Endless(io.RawIOBase):
        def __init__(self):
            self.reads = []

        def read(self, n=-1):
            assert n is not None and 0 < n <= 4096, "a reader must read in bounded blocks"
            self.reads.append(n)
            if len(self.reads) > 1000:
                raise AssertionError("read far ahead of what was consumed")
            return (b"word " * n)[:n]

        def isatty(self):
            return False

    stream = Endless()
    doc = open_document("-", block_chars=4096, stdin=stream)
    assert doc.kind == "stdin" and doc.total_bytes is None and doc.name == STDIN_NAME
    first = list(itertools.islice(iter(doc), 5))
    assert len(first) == 5 and len(stream.reads) <= 6


def test_stdin_text_and_pdf(tmp_path):
    doc = open_document("-", stdin=io.BytesIO("héllo\nwörld".encode()))
    assert read_all(doc)[1] == "héllo\nwörld"
    pdf = make_pdf(tmp_path / "in.pdf", pages=2)
    doc = open_document("-", stdin=io.BytesIO(pdf.read_bytes()))
    chunks, _ = read_all(doc)
    assert doc.kind == "pdf" and [c.page for c in chunks] == [1, 2]


def test_pdf_pages_and_separator(tmp_path):
    p = make_pdf(tmp_path / "report.pdf", pages=4)
    doc = open_document(p)
    assert doc.kind == "pdf" and doc.total_pages == 4
    chunks, text = read_all(doc)
    assert [c.page for c in chunks] == [1, 2, 3, 4]
    for c in chunks:
        assert f"Page {c.page} of the report" in c.text
        assert c.text.startswith(PAGE_SEPARATOR) == (c.page > 1)
    check_provenance(chunks, text)
    # words at page ends never merge with the next page's first word
    assert f"minute1 safe.{PAGE_SEPARATOR}Page 2" in text


def test_pdf_is_read_page_by_page(tmp_path):
    p = make_pdf(tmp_path / "lazy.pdf", pages=5)
    doc = open_document(p)
    it = iter(doc)
    first = next(it)
    assert first.page == 1 and doc.pages_read == 1
    second = next(it)
    assert second.page == 2 and doc.pages_read == 2
    doc.close()


def test_long_pdf_page_is_split_into_blocks(tmp_path):
    p = make_pdf(tmp_path / "long.pdf", pages=2, texts=["alpha " * 300, "omega"])
    chunks, text = read_all(open_document(p, block_chars=100))
    assert all(len(c.text) <= 100 for c in chunks)
    assert {c.page for c in chunks} == {1, 2}
    check_provenance(chunks, text)


def test_encrypted_pdf(tmp_path):
    plain = make_pdf(tmp_path / "plain.pdf", pages=2)
    locked = encrypt_pdf(plain, tmp_path / "locked.pdf", "s3cret")
    with pytest.raises(InputError, match=r"locked\.pdf: .*encrypted.*--password"):
        open_document(locked)
    with pytest.raises(InputError, match=r"locked\.pdf: wrong password"):
        open_document(locked, password="nope")
    chunks, _ = read_all(open_document(locked, password="s3cret"))
    assert [c.page for c in chunks] == [1, 2] and page_text(2)[:20] in chunks[1].text
    # encrypted against editing only: the empty user password opens it without asking
    open_pdf = encrypt_pdf(plain, tmp_path / "open.pdf", "")
    assert len(read_all(open_document(open_pdf))[0]) == 2


def test_damaged_pdf_warnings_are_summarized(tmp_path, capsys, caplog):
    good = make_pdf(tmp_path / "good.pdf", pages=2).read_bytes()
    i = good.rfind(b"startxref")
    bad = tmp_path / "badxref.pdf"
    bad.write_bytes(good[:i] + b"startxref\n999\n%%EOF\n")
    with caplog.at_level(logging.DEBUG):
        doc = open_document(bad)
        chunks, _ = read_all(doc)
    assert len(chunks) == 2
    assert len(doc.warnings) == 1 and "pypdf reported" in doc.warnings[0] and "badxref.pdf" in doc.warnings[0]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "binary", "zip", "bom-only", "truncated-pdf",
                                  "corrupted-pdf", "not-a-pdf", "no-text-pdf", "empty-stdin"])
def test_bad_input_is_one_line_input_error(tmp_path, case):
    name, stdin = tmp_path / f"{case}.bin", None
    if case == "directory":
        name = tmp_path / "folder"
        name.mkdir()
    elif case == "empty":
        name.write_bytes(b"")
    elif case == "binary":
        name.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    elif case == "zip":
        name.write_bytes(b"PK\x03\x04" + b"x" * 100)
    elif case == "bom-only":
        name.write_bytes(codecs.BOM_UTF8)
    elif case in ("truncated-pdf", "corrupted-pdf"):
        data = make_pdf(tmp_path / "src.pdf", pages=3).read_bytes()
        name = tmp_path / f"{case}.pdf"
        name.write_bytes(data[:len(data) // 2] if case == "truncated-pdf" else data[:9] + b"\x13" * (len(data) - 9))
    elif case == "not-a-pdf":
        name = tmp_path / "scan.pdf"
        name.write_bytes(b"just some text in a file named .pdf")
    elif case == "no-text-pdf":
        name = make_blank_pdf(tmp_path / "scan.pdf")
    elif case == "empty-stdin":
        name, stdin = "-", io.BytesIO(b"")
    with pytest.raises(InputError) as e:
        read_all(open_document(name, stdin=stdin))
    msg = str(e.value)
    assert "\n" not in msg
    assert (STDIN_NAME if name == "-" else str(name)) in msg
    if case == "no-text-pdf":
        assert "no extractable text: run OCR first" in msg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=400), block=st.integers(1, 64))
def test_any_bytes_never_crash(tmp_path, data, block):
    p = tmp_path / "any.txt"
    p.write_bytes(data)
    try:
        _, text = read_all(open_document(p, block_chars=block))
    except InputError as e:
        assert "any.txt" in str(e) and "\n" not in str(e)
    else:
        assert isinstance(text, str)


def _fifo_with_writer(path, data: bytes):
    import threading

    os.mkfifo(path)

    def write():
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_pipe_is_read_whole_and_never_cached(tmp_path, tiny_checkpoint, cache_dir):
    """<(cat report.txt) and named pipes: every byte read (not the first 64 KiB), nothing cached."""
    import json as _json

    from typer.testing import CliRunner

    from infini_cli.cli import app

    text = "".join(f"Line {i} says the bridge was painted blue in spring.\n" for i in range(4000))  # ~200 KB
    whole = tmp_path / "whole.txt"
    whole.write_text(text)
    ref = _json.loads(CliRunner().invoke(app, ["read", str(whole), "--model", str(tiny_checkpoint), "--json",
                                               "--no-cache"]).stdout)
    fifo = tmp_path / "pipe"
    t = _fifo_with_writer(fifo, text.encode())
    r = CliRunner().invoke(app, ["ask", str(fifo), "What colour was the bridge?", "--model", str(tiny_checkpoint),
                                 "--json"])
    t.join(5)
    assert r.exit_code == 0, r.output
    data = _json.loads(r.stdout)
    assert data["tokens"] == ref["tokens"] and data["cached"] is False
    from infini_cli import cache as doc_cache

    assert doc_cache.list_entries(cache_dir) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_pipe_with_no_writer_fails_at_once(tmp_path):
    from typer.testing import CliRunner

    from infini_cli.cli import app

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = CliRunner().invoke(app, ["read", str(fifo)])
    assert r.exit_code == 2 and "empty" in r.output and "Traceback" not in r.output
