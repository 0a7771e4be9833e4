"""`infini read` end to end: reader -> incremental tokenizer -> model, through the CLI with a
tiny checkpoint; every bad input a one-line error with exit code 2."""

from __future__ import annotations

import io
import json
import os
import pathlib

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from infini_cli.checkpoint import load_checkpoint
from infini_cli.cli import app
from infini_cli.tasks.reading import read_document
from infini_cli.memory import StreamState
from infini_cli.progress import ReadProgress
from infini_cli.readers import open_document
from infini_cli.stream import feed
from tests.pdf_factory import encrypt_pdf, make_blank_pdf, make_pdf

from .conftest import assert_one_line_error

runner = CliRunner()
TEXT = "Call me Ishmael. Some years ago, never mind how long precisely — 会议决定。 😀\n\n" * 12


def run(*args, input=None):
    return runner.invoke(app, list(map(str, args)), input=input)




def test_help_lists_read():
    r = run("--help")
    assert r.exit_code == 0 and "read" in r.output
    r = run("read", "--help")
    assert r.exit_code == 0 and "--password" in r.output and "--quiet" in r.output


@pytest.mark.slow
def test_read_text_json(tmp_path, tiny_checkpoint, tokenizer):
    p = tmp_path / "book.txt"
    p.write_text(TEXT, encoding="utf-8")
    r = run("read", p, "--model", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)  # nothing else on the output: no progress bar when not a terminal
    tokens = len(tokenizer.encode(TEXT))
    assert data["tokens"] == tokens and data["chars"] == len(TEXT) and data["bytes"] == p.stat().st_size
    assert data["pages"] is None and data["kind"] == "text" and data["exact_tokenization"]
    assert data["segments_written"] == tokens // 16 and data["warnings"] == []


def test_read_pdf_table(tmp_path, tiny_checkpoint):
    p = make_pdf(tmp_path / "report.pdf", pages=3)
    r = run("read", p, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "pages" in r.output and "tokens" in r.output and "report.pdf" in r.output


@pytest.mark.slow
def test_read_stdin(tiny_checkpoint, tokenizer):
    r = run("read", "-", "--model", tiny_checkpoint, "--json", input=TEXT.encode())
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kind"] == "stdin" and data["tokens"] == len(tokenizer.encode(TEXT))


def test_state_equals_feeding_the_whole_text(tmp_path, tiny_checkpoint):
    """The streamed document leaves the model in the state the whole text's ids would."""
    p = tmp_path / "book.txt"
    p.write_bytes(TEXT.encode("utf-16"))
    loaded = load_checkpoint(tiny_checkpoint)
    result = read_document(loaded, p, quiet=True, block_chars=37)
    ids = loaded.tokenizer.encode(TEXT)
    _, whole = feed(loaded.model, StreamState.empty(loaded.config), ids, logits="none")
    assert result.state.tokens_seen == len(ids) == result.tokens
    assert result.state.segments_written == whole.segments_written
    for a, b in zip(result.state.M + result.state.k_local, whole.M + whole.k_local):
        torch.testing.assert_close(a, b)


def test_on_chunk_sees_pages(tmp_path, tiny_checkpoint):
    p = make_pdf(tmp_path / "report.pdf", pages=4)
    loaded = load_checkpoint(tiny_checkpoint)
    seen = []
    result = read_document(loaded, p, quiet=True, on_chunk=seen.append)
    assert result.pages == 4 and sum(len(c) for c in seen) == result.tokens
    text = "".join(c.text for c in seen)
    tokens = [(off, c.page(i)) for c in seen for i, off in enumerate(c.offsets)]
    for k in range(1, 5):  # the token holding the first letter of "minute{k}" lies on page k
        start = text.index(f"minute{k}")
        assert [page for off, page in tokens if off <= start][-1] == k


def test_damaged_pdf_is_read_with_one_warning(tmp_path, tiny_checkpoint):
    good = make_pdf(tmp_path / "good.pdf", pages=2).read_bytes()
    bad = tmp_path / "badxref.pdf"
    bad.write_bytes(good[:good.rfind(b"startxref")] + b"startxref\n999\n%%EOF\n")
    r = run("read", bad, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "pypdf reported" in lines[0] and "badxref.pdf" in lines[0]
    assert r.output.count("startxref") == 1  # quoted once in the summary, not dumped


def test_undecodable_bytes_warn_once(tmp_path, tiny_checkpoint):
    p = tmp_path / "latin1.txt"
    p.write_bytes("déjà vu, à bientôt\n".encode("latin-1") * 30)
    r = run("read", p, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "undecodable" in warnings[0] and "latin1.txt" in warnings[0]


def test_ctrl_c_is_one_line_and_130(tmp_path, tiny_checkpoint, monkeypatch):
    p = tmp_path / "book.txt"
    p.write_text(TEXT)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("infini_cli.tasks.reading.ingest", interrupted)
    r = run("read", p, "--model", tiny_checkpoint)
    assert r.exit_code == 130
    assert r.output.strip() == "interrupted"


def _bad_input(case: str, tmp_path: pathlib.Path, monkeypatch) -> tuple[list, str, bytes | None]:
    """Make one bad input; returns (extra CLI args, the name the error must show, stdin)."""
    p = tmp_path / f"{case}.txt"
    if case == "missing":
        return [p], p.name, None
    if case == "directory":
        p = tmp_path / "a-folder"
        p.mkdir()
        return [p], p.name, None
    if case == "empty":
        p.write_bytes(b"")
        return [p], p.name, None
    if case == "binary":
        p = tmp_path / "program.txt"
        p.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
        return [p], p.name, None
    if case in ("encrypted", "wrong-password"):
        p = encrypt_pdf(make_pdf(tmp_path / "plain.pdf", pages=2), tmp_path / "locked.pdf", "s3cret")
        return ([p] if case == "encrypted" else [p, "--password", "guess"]), p.name, None
    if case in ("truncated", "corrupted"):
        data = make_pdf(tmp_path / "src.pdf", pages=3).read_bytes()
        p = tmp_path / f"{case}.pdf"
        p.write_bytes(data[:len(data) * 2 // 3] if case == "truncated" else data[:9] + b"\x07" * (len(data) - 9))
        return [p], p.name, None
    if case == "no-text":
        p = make_blank_pdf(tmp_path / "scan.pdf")
        return [p], p.name, None
    if case == "unreadable":
        p.write_text("secret")
        p.chmod(0)
        if os.access(p, os.R_OK):  # root reads anything: make the open fail the way it would
            real_open = pathlib.Path.open

            def deny(self, *args, **kwargs):
                if self.name == p.name:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_open(self, *args, **kwargs)

            monkeypatch.setattr(pathlib.Path, "open", deny)
        return [p], p.name, None
    if case == "empty-stdin":
        return ["-"], "<stdin>", b""
    raise AssertionError(case)


@pytest.mark.parametrize("case,words", [
    ("missing", ["no such file"]),
    ("directory", ["is a directory"]),
    ("empty", ["empty"]),
    ("binary", ["binary"]),
    ("encrypted", ["encrypted", "--password"]),
    ("wrong-password", ["wrong password"]),
    ("truncated", ["not a readable PDF", "truncated"]),
    ("corrupted", ["not a readable PDF"]),
    ("no-text", ["no extractable text: run OCR first"]),
    ("unreadable", ["cannot read", "permission"]),
    ("empty-stdin", ["empty"]),
])
def test_bad_input(tmp_path, tiny_checkpoint, monkeypatch, case, words):
    args, name, stdin = _bad_input(case, tmp_path, monkeypatch)
    r = run("read", *args, "--model", tiny_checkpoint, input=stdin)
    assert_one_line_error(r, 2, name, *words)


def test_progress_draws_on_a_terminal_only(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text(TEXT)
    for quiet, terminal, drawn in [(False, True, True), (True, True, False), (False, False, False)]:
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=120)
        doc = open_document(p)
        with ReadProgress(doc, quiet=quiet, console=console) as bar:
            for chunk in doc:
                bar.tokens(len(chunk.text))
        assert ("tok/s" in buf.getvalue()) == drawn
        assert bar.total_tokens == len(TEXT)
