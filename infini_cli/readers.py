"""Document readers: PDFs, text files and standard input as a lazy stream of text chunks.

Every reader yields `TextChunk`s with their provenance and never holds more than one block
(text) or one page (PDF) at a time, so a 10 GB file reads in the same memory as a 10 KB one.
The chunks concatenate to the *document text*; for PDFs that is the pages' text joined by
PAGE_SEPARATOR, so the last word of a page never merges with the first word of the next.

Every bad input raises `InputError` with one line that names the file and says what to do.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Optional

from .errors import InputError

if TYPE_CHECKING:
    from .pdf import PdfSource

DEFAULT_BLOCK_CHARS = 1 << 16  # 64 K: big enough for fast tokenizing, small enough to stay flat
PAGE_SEPARATOR = "\n\n"
STDIN_NAME = "<stdin>"

# Only the first block is sniffed: a binary file shows itself at once, and reading further
# before streaming would break the promise of constant memory.
BINARY_UNDECODABLE_SHARE = 0.3
SNIFF_BYTES = 4096  # the first read is at least this long, whatever the block size: BOMs, magic

_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_MAGIC = (  # formats that are not text, with what to do about them
    (b"PK\x03\x04", "a ZIP archive (.docx, .epub and .odt are ZIP files): save it as PDF or plain text first"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"\x89PNG", "a PNG image: run OCR on it first"),
    (b"\xff\xd8\xff", "a JPEG image: run OCR on it first"),
)


@dataclass
class TextChunk:
    """A piece of the document text and where it came from."""

    text: str
    page: Optional[int]  # 1-based page number as a PDF viewer shows it; None for text
    char_offset: int  # offset of text[0] in the whole document text (characters, not bytes)
    line: int  # 1-based line number of text[0] in the document text


@dataclass
class Document:
    """An opened document: metadata for progress bars, and a one-shot lazy chunk iterator."""

    name: str
    kind: str  # "pdf", "text", "stdin" or "pipe" (a named pipe, <(...) or device: read once, never cached)
    total_bytes: Optional[int]  # None for standard input
    total_pages: Optional[int]  # PDFs only, from the page tree's /Count
    warnings: list[str] = field(default_factory=list)
    bytes_read: int = 0  # raw bytes consumed so far (text and stdin)
    pages_read: int = 0  # pages extracted so far (PDFs)
    chars_read: int = 0  # characters of document text yielded so far
    on_warning: Optional[Callable[[str], None]] = None
    _chunks: Optional[Iterator[TextChunk]] = field(default=None, repr=False)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def __iter__(self) -> Iterator[TextChunk]:
        if self._chunks is None:
            raise RuntimeError(f"{self.name}: a document can be read only once; open it again")
        chunks, self._chunks = self._chunks, None
        try:
            yield from chunks
        finally:
            self.close()

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "Document":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_document(
    path: str | os.PathLike[str],
    password: Optional[str] = None,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    stdin: Optional[BinaryIO] = None,
) -> Document:
    """Open a PDF, a text file, or standard input ("-"); checks the input before any reading.

    Raises InputError for a missing, unreadable, empty, binary or undecryptable input, or a
    PDF that pypdf cannot parse. Problems found later (a PDF with no text layer) are raised
    while iterating. `stdin` replaces sys.stdin.buffer (tests).
    """
    if block_chars < 1:
        raise ValueError("block_chars must be positive")
    if str(path) == "-":
        return _open_stdin(stdin if stdin is not None else sys.stdin.buffer, password, block_chars)
    p = Path(path)
    name = str(p)
    try:
        if not p.exists():
            raise InputError(f"{name}: no such file; check the path")
        if p.is_dir():
            raise InputError(f"{name}: is a directory; pass a PDF or text file inside it")
        mode = os.stat(p).st_mode
        if not stat.S_ISREG(mode):
            if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
                raise InputError(f"{name}: not a regular file, pipe or device; pass a PDF or text file")
            return _open_stream(_open_pipe(p), name, "pipe", password, block_chars)
        fh = p.open("rb")
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e}); check the file's permissions") from None
    try:
        first = fh.read(max(block_chars, SNIFF_BYTES))
    except OSError as e:
        fh.close()
        raise InputError(f"{name}: cannot read ({e.strerror or e}); check the file and the disk") from None
    size = _file_size(fh)
    if not first:
        fh.close()
        raise InputError(f"{name}: the file is empty; pass a document with text in it")
    if first.startswith(b"%PDF-") or (p.suffix.lower() == ".pdf" and b"%PDF-" in first[:1024]):
        fh.seek(0)
        return _pdf_document(name, fh, size, password, block_chars)
    if p.suffix.lower() == ".pdf":
        fh.close()
        raise InputError(f"{name}: not a PDF (no %PDF header); the file is corrupted or mislabelled: "
                         "re-download it, or rename it if it is text")
    return _text_document(name, "text", fh, first, size, block_chars)


def _file_size(fh: BinaryIO) -> Optional[int]:
    """The size of a regular file; None for pipes and devices (no total, no ETA)."""
    try:
        st = os.fstat(fh.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _open_pipe(p: Path) -> BinaryIO:
    """A named pipe, process substitution (<(...)) or device, opened without blocking: a FIFO
    with no writer would otherwise hang open() forever; it then reads as empty."""
    import fcntl

    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def _open_stdin(stream: BinaryIO, password: Optional[str], block_chars: int) -> Document:
    if getattr(stream, "isatty", lambda: False)():
        raise InputError(f"{STDIN_NAME}: standard input is a terminal; pipe a document in "
                         "(cat book.txt | infini read -) or pass a file")
    return _open_stream(stream, STDIN_NAME, "stdin", password, block_chars)


def _open_stream(stream: BinaryIO, name: str, kind: str, password: Optional[str], block_chars: int) -> Document:
    """Standard input or a pipe: read once, front to back (never hashed or cached: what it
    holds is known only after reading it all)."""
    what = "standard input" if kind == "stdin" else "the pipe"
    try:
        first = stream.read(max(block_chars, SNIFF_BYTES))
    except OSError as e:
        if kind != "stdin":
            stream.close()
        raise InputError(f"{name}: cannot read {what} ({e.strerror or e})") from None
    if not first:
        if kind != "stdin":
            stream.close()
        raise InputError(f"{name}: {what} is empty (nothing was written to it); pipe a document in")
    if first.startswith(b"%PDF-"):
        # pypdf needs to seek (the cross-reference table is at the end), a pipe cannot:
        # spool to an anonymous file on disk, which keeps memory flat whatever the size.
        spool = tempfile.TemporaryFile()
        spool.write(first)
        while block := stream.read(1 << 20):
            spool.write(block)
        if kind != "stdin":
            stream.close()
        size = spool.tell()
        spool.seek(0)
        return _pdf_document(name, spool, size, password, block_chars)
    return _text_document(name, kind, stream, first, None, block_chars)


def _pdf_document(name: str, fh: BinaryIO, size: Optional[int], password: Optional[str],
                  block_chars: int) -> Document:
    from .pdf import PdfSource  # pypdf is imported only when a PDF is read

    try:
        source = PdfSource(name, fh, password)
    except BaseException:
        fh.close()
        raise
    doc = Document(name, "pdf", size, source.total_pages)
    doc._closers.append(fh.close)
    doc._chunks = _pdf_chunks(doc, source, block_chars)
    return doc


def _pdf_chunks(doc: Document, source: "PdfSource", block_chars: int) -> Iterator[TextChunk]:
    offset, line, with_text = 0, 1, 0
    for number, text in source.pages():
        doc.pages_read = number
        if number > 1:
            text = PAGE_SEPARATOR + text
        if text.strip():
            with_text += 1
        for piece in _pieces(text, block_chars):
            yield TextChunk(piece, number, offset, line)
            offset += len(piece)
            line += piece.count("\n")
            doc.chars_read = offset
    doc.bytes_read = doc.total_bytes or 0
    for message in source.summary():
        doc.warn(message)
    if doc.pages_read == 0:
        raise InputError(f"{doc.name}: the PDF has no pages; the file is damaged or empty: download it again")
    if with_text == 0:
        if source.problems.count:
            raise InputError(f"{doc.name}: no extractable text, and {source.problems.describe()}: the file is damaged "
                             "(repair it, e.g. qpdf in.pdf out.pdf) or scanned (run OCR first)")
        raise InputError(f"{doc.name}: no extractable text: run OCR first (e.g. ocrmypdf), then read the result")
    if with_text < doc.pages_read:
        doc.warn(f"{doc.name}: {doc.pages_read - with_text} of {doc.pages_read} pages have no extractable text "
                 "(scanned?); run OCR for those")


def _pieces(text: str, size: int) -> Iterator[str]:
    """Split a page's text into blocks of at most `size` characters (a page can be huge)."""
    if len(text) <= size:
        if text:
            yield text
        return
    for i in range(0, len(text), size):
        yield text[i:i + size]


# ----------------------------------------------------------------------------- text

def _text_document(name: str, kind: str, fh: BinaryIO, first: bytes, size: Optional[int],
                   block_chars: int) -> Document:
    encoding = next((enc for bom, enc in _BOMS if first.startswith(bom)), "utf-8")
    if encoding == "utf-8":
        try:
            _check_not_binary(name, first)
        except InputError:
            if kind != "stdin":
                fh.close()
            raise
    doc = Document(name, kind, size, None)
    if kind != "stdin":
        doc._closers.append(fh.close)
    doc._chunks = _text_chunks(doc, fh, first, encoding, block_chars)
    return doc


def _check_not_binary(name: str, first: bytes) -> None:
    for magic, what in _MAGIC:
        if first.startswith(magic):
            raise InputError(f"{name}: a binary file, {what}")
    nul = first.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{name}: a binary file (NUL byte at offset {nul}), not text; pass a PDF or a text file "
                         "(UTF-16 text needs a byte-order mark, or convert it to UTF-8)")
    # A truncated multi-byte character at the block's end is not an error: decode as final=False.
    dec = codecs.getincrementaldecoder("utf-8")(errors=_COUNTING_REPLACE)
    with _Replacements() as bad:
        dec.decode(first, final=False)
    if len(first) >= 64 and bad.bytes > BINARY_UNDECODABLE_SHARE * len(first):
        raise InputError(f"{name}: a binary file ({bad.bytes} of the first {len(first)} bytes are not UTF-8), "
                         "not text; pass a PDF or a UTF-8 / UTF-16 text file")


def _text_chunks(doc: Document, fh: BinaryIO, first: bytes, encoding: str,
                 block_chars: int) -> Iterator[TextChunk]:
    # Incremental decoding: a character split across two reads is completed by the next one.
    decoder = codecs.getincrementaldecoder(encoding)(errors=_COUNTING_REPLACE)
    offset, line, replaced, first_bad = 0, 1, 0, None
    data = first
    while True:
        doc.bytes_read += len(data)
        final = not data
        with _Replacements() as bad:
            text = decoder.decode(data, final=final)
        if bad.bytes:
            replaced += bad.bytes
            if first_bad is None:
                first_bad = doc.bytes_read - len(data)
        for piece in _pieces(text, block_chars):
            yield TextChunk(piece, None, offset, line)
            offset += len(piece)
            line += piece.count("\n")
            doc.chars_read = offset
        if final:
            break
        try:
            data = fh.read(block_chars)
        except OSError as e:
            raise InputError(f"{doc.name}: read failed after {doc.bytes_read} bytes ({e.strerror or e}); "
                             "check the file or the disk") from None
    if replaced:
        where = f" (the first near byte {first_bad:,})" if first_bad is not None else ""
        doc.warn(f"{doc.name}: {replaced} undecodable byte{'s' if replaced != 1 else ''} replaced with U+FFFD"
                 f"{where}; the file is not valid {encoding.upper().replace('-SIG', '')}: convert it to UTF-8 "
                 "for exact text")
    if offset == 0:
        raise InputError(f"{doc.name}: no text in it (only a byte-order mark); pass a document with text in it")


# Undecodable bytes: replaced with U+FFFD like errors="replace", and counted so that the
# reader can report them in one warning instead of failing or hiding them.
_COUNTING_REPLACE = "infini-counting-replace"
_tally = threading.local()


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _tally.bytes = getattr(_tally, "bytes", 0) + (err.end - err.start)
    return "\ufffd", err.end


codecs.register_error(_COUNTING_REPLACE, _count_and_replace)


class _Replacements:
    """Counts the bytes replaced by decode calls made inside the `with` block (this thread)."""

    def __enter__(self) -> "_Replacements":
        self._saved = getattr(_tally, "bytes", 0)
        _tally.bytes = 0
        self.bytes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = _tally.bytes
        _tally.bytes = self._saved


def file_sha256(path: "str | os.PathLike[str]", block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory): a document's cache key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
