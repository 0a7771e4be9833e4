"""PDF text, page by page, through pypdf, in memory that does not grow with the page count.

Two things keep memory flat. The page tree is walked lazily instead of through
`reader.pages` (which builds a PageObject for every page up front), and pypdf's cache of
parsed objects is emptied every few pages (it otherwise keeps every page's content stream
and grew by ~8 MB per 1,000 pages in our measurements). The file is read through an open
handle: given a path, pypdf would load the whole file into memory.

pypdf reports damage through `logging` and `warnings`; both are captured here and summed
up in one warning, not dumped on the user's terminal.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional

from pypdf import PageObject, PdfReader
from pypdf.errors import DependencyError, PdfReadError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

from .errors import InputError

FORGET_EVERY = 16  # pages between two purges of pypdf's object cache (fonts are re-parsed after one)
MAX_TREE_DEPTH = 256
_INHERITABLE = ("/Resources", "/MediaBox", "/CropBox", "/Rotate")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


class Problems:
    """pypdf's complaints, counted, with the first few kept as examples (memory stays flat)."""

    def __init__(self, keep: int = 3) -> None:
        self.count = 0
        self.examples: list[str] = []
        self._keep = keep

    def add(self, message: str) -> None:
        self.count += 1
        message = message.strip().splitlines()[0][:160] if message.strip() else "unknown problem"
        if len(self.examples) < self._keep and message not in self.examples:
            self.examples.append(message)

    def describe(self) -> str:
        s = "s" if self.count != 1 else ""
        return f"pypdf reported {self.count} problem{s}, first: {self.examples[0]!r}" if self.count else ""

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Route pypdf's log records and Python warnings raised inside the block to this tally."""
        logger = logging.getLogger("pypdf")
        handler = _TallyHandler(self)
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
            for w in caught:
                self.add(str(w.message))


class _TallyHandler(logging.Handler):
    def __init__(self, problems: Problems) -> None:
        super().__init__(logging.WARNING)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.add(record.getMessage())


class PdfSource:
    """An opened, decrypted PDF whose pages' text can be read once, in order."""

    def __init__(self, name: str, fh: BinaryIO, password: Optional[str] = None) -> None:
        self.name = name
        self.problems = Problems()
        self.failed_pages: list[int] = []  # at most a few kept; count in failed_count
        self.failed_count = 0
        self.pages_found = 0
        self.tree_broken_after: Optional[int] = None
        with self.problems.capture():
            self.reader = self._open(fh)
            self._decrypt(password)
            self.total_pages = self._count()

    def _open(self, fh: BinaryIO) -> PdfReader:
        try:
            return PdfReader(fh, strict=False)
        except Exception as e:  # pypdf raises many kinds on damaged files, not only PdfReadError
            raise InputError(f"{self.name}: not a readable PDF ({_first_line(e)}); the file is corrupted or "
                             "truncated: download it again or repair it (e.g. qpdf in.pdf out.pdf)") from None

    def _decrypt(self, password: Optional[str]) -> None:
        reader = self.reader
        try:
            if not reader.is_encrypted:
                return
            # Many PDFs are encrypted only against editing, with an empty user password.
            if reader.decrypt(""):
                return
            if password is None:
                raise InputError(f"{self.name}: the PDF is encrypted; pass its password with --password")
            if reader.decrypt(password):
                return
            raise InputError(f"{self.name}: wrong password for this encrypted PDF; check --password")
        except DependencyError:
            raise InputError(f"{self.name}: the PDF is encrypted with AES, which needs the cryptography package: "
                             "pip install cryptography") from None
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.name}: cannot decrypt the PDF ({_first_line(e)}); the file may be damaged: "
                             "download it again") from None

    def _count(self) -> Optional[int]:
        try:
            count = int(self.reader.trailer["/Root"]["/Pages"]["/Count"])
            return count if count >= 0 else None
        except Exception:  # a missing or broken /Count only costs the progress bar its total
            return None

    def pages(self) -> Iterator[tuple[int, str]]:
        """Yield (1-based page number, text) for every page, in document order."""
        walker = _walk_pages(self.reader)
        number = 0
        while True:
            with self.problems.capture():
                try:
                    page = next(walker, None)
                except Exception as e:
                    if number == 0:
                        raise InputError(f"{self.name}: not a readable PDF (its page list is damaged: "
                                         f"{_first_line(e)}); download it again or repair it "
                                         "(e.g. qpdf in.pdf out.pdf)") from None
                    self.tree_broken_after = number
                    self.problems.add(f"page list damaged after page {number}: {_first_line(e)}")
                    return
            if page is None:
                return
            number += 1
            self.pages_found = number
            yield number, self._text(page, number)
            if number % FORGET_EVERY == 0:
                self._forget()

    def _text(self, page: PageObject, number: int) -> str:
        with self.problems.capture():
            try:
                text = page.extract_text()
            except Exception as e:  # one bad page should not lose the rest of the book
                self.failed_count += 1
                if len(self.failed_pages) < 3:
                    self.failed_pages.append(number)
                self.problems.add(f"page {number}: {_first_line(e)}")
                return ""
        if _SURROGATE.search(text):  # broken ToUnicode maps: the tokenizer would refuse them
            text = _SURROGATE.sub("\ufffd", text)
        return text

    def _forget(self) -> None:
        cache = getattr(self.reader, "resolved_objects", None)
        if isinstance(cache, dict):
            cache.clear()

    def summary(self) -> list[str]:
        """Warnings to show once the document has been read."""
        out = []
        if self.failed_count:
            more = ", ..." if self.failed_count > len(self.failed_pages) else ""
            pages = ", ".join(map(str, self.failed_pages)) + more
            out.append(f"{self.name}: the text of {self.failed_count} page(s) could not be extracted (page {pages}); "
                       "they were skipped")
        if self.tree_broken_after is not None:
            out.append(f"{self.name}: the page list is damaged after page {self.tree_broken_after}; "
                       "the rest was skipped: repair the file (e.g. qpdf in.pdf out.pdf)")
        elif self.total_pages is not None and self.total_pages != self.pages_found:
            out.append(f"{self.name}: the PDF says it has {self.total_pages} pages but {self.pages_found} were found")
        if self.problems.count:
            out.append(f"{self.name}: {self.problems.describe()}; the text may be incomplete")
        return out


def _walk_pages(reader: PdfReader) -> Iterator[PageObject]:
    """The page tree's leaves in order, each a PageObject with inherited attributes filled in.

    The same walk as pypdf's own flattening (inheritable /Resources, /MediaBox, /CropBox,
    /Rotate; a node without /Type is a page unless it has /Kids), but lazy: it holds only the
    path from the root to the current page. Cycles and absurd depths are refused.
    """
    top = reader.trailer["/Root"].get_object()
    root_ref = top.raw_get("/Pages") if isinstance(top, DictionaryObject) and "/Pages" in top else None
    if root_ref is None:
        raise PdfReadError("no /Pages in the document catalog")
    # Each frame: (iterator over kids, inherited attributes, references of the ancestors)
    stack: list[tuple[Iterator[object], dict[str, object], frozenset[tuple[int, int]]]] = [
        (iter([root_ref]), {}, frozenset())
    ]
    while stack:
        kids, inherit, ancestors = stack[-1]
        ref = next(kids, None)
        if ref is None:
            stack.pop()
            continue
        indirect = ref if isinstance(ref, IndirectObject) else None
        node = ref.get_object() if indirect is not None else ref
        if not isinstance(node, DictionaryObject) or not node:
            continue  # damaged files can hold nulls in /Kids; pypdf skips them too
        key = (indirect.idnum, indirect.generation) if indirect is not None else None
        if key is not None and key in ancestors:
            raise PdfReadError("cyclic page tree")
        kind = node.get("/Type")
        if kind is None:
            kind = "/Pages" if "/Kids" in node else "/Page"
        if kind == "/Pages":
            if len(stack) > MAX_TREE_DEPTH:
                raise PdfReadError("page tree too deep")
            inherited = dict(inherit)
            for attr in _INHERITABLE:
                if attr in node:
                    inherited[attr] = node.raw_get(attr)
            children = node.get("/Kids")
            children = children.get_object() if children is not None else None
            items = iter(children) if isinstance(children, ArrayObject) else iter(())
            stack.append((items, inherited, ancestors | ({key} if key else set())))
        else:
            page = PageObject(reader, indirect)
            page.update(node)
            for attr, value in inherit.items():
                if attr not in page:
                    page[NameObject(attr)] = value  # type: ignore[index]
            yield page
