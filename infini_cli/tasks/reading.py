"""Read a document once (or load it from the cache) and show every sentence to the task's pools.

Shared by ask and summarize. Reading streams the document through the model at constant
memory (`read_document`); each token chunk is split into sentences with page and line, the
lexical statistics grow, the sentences go to the cache entry on disk, and the task's
consumers (bounded candidate pools) see each sentence once. On a cache hit the model does
not run at all: the saved memory is loaded and the sentences stream back from disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from rich.console import Console

from .. import cache as doc_cache
from ..checkpoint import LoadedModel
from ..memory import StreamState
from ..readers import Document
from .evidence import DocumentIndex, Passage, SentenceFeed

if TYPE_CHECKING:
    from ..document import ReadStats

Consumer = Callable[[Passage, DocumentIndex], None]


@dataclass
class ReadResult:
    state: StreamState
    index: DocumentIndex
    name: str
    kind: str
    tokens: int
    pages: Optional[int]
    read_seconds: float
    cached: bool
    entry: Optional[doc_cache.CacheEntry] = None
    warnings: list[str] = field(default_factory=list)
    stats: Optional["ReadStats"] = None   # the read's own figures, when the document was read now


@dataclass
class RunFacts:
    """What every reading task reports about the document and the run (the shared JSON fields)."""

    document: str
    tokens: int
    pages: Optional[int]
    seconds: float
    read_seconds: float
    cached: bool
    model: str
    device: str

    @classmethod
    def of(cls, read: ReadResult, loaded: LoadedModel, started: float) -> "RunFacts":
        from ..device import describe

        return cls(read.name, read.tokens, read.pages, time.perf_counter() - started, read.read_seconds,
                   read.cached, str(loaded.header.path), describe(loaded.device))

    def as_dict(self) -> dict:
        return {"document": self.document, "tokens": self.tokens, "pages": self.pages,
                "seconds": round(self.seconds, 3), "read_seconds": round(self.read_seconds, 3),
                "cached": self.cached, "model": self.model, "device": self.device}


def generates_answers(loaded: LoadedModel) -> bool:
    """The checkpoint's capability flag: training metadata `"generates_answers": true`."""
    return loaded.header.training.get("generates_answers") is True


def read_or_load(
    loaded: LoadedModel,
    doc: Document,
    consumers: list[Consumer],
    use_cache: bool = True,
    quiet: bool = False,
    console: Optional[Console] = None,
    cache_root=None,
    lookup: bool = True,
) -> ReadResult:
    """Stream `doc` (already opened, so bad input failed before the model loaded) or load it.

    lookup=False always reads (`infini read` measures reading) but still saves the entry, so a
    later ask or summarize starts from it.

    Standard input and pipes are never cached: their hash is known only after reading them all.
    """
    started = time.perf_counter()
    key = None
    warnings: list[str] = []
    if use_cache and doc.kind in ("text", "pdf"):  # regular files: a pipe's hash is known only after reading
        key = (doc_cache.file_sha256(doc.name), doc_cache.model_hash(loaded.header.path))
        entry = doc_cache.lookup(*key, root=cache_root) if lookup else None
        state = index = None
        if entry is not None:
            try:
                # everything is checked before a task sees a sentence, so a damaged entry
                # costs a re-read, never a wrong answer or a broken document
                state = entry.load_state(loaded)
                index = entry.load_index()
                entry.check_passages()
            except Exception as e:  # any damage: truncated, mis-keyed, not finite, bad JSON
                why = (str(e).splitlines() or [type(e).__name__])[0][:120]
                warnings.append(f"the cached memory of {doc.name} was damaged ({why}); removed {entry.path} "
                                "and read the document again")
                entry.remove()
                entry = None
        if entry is not None and state is not None and index is not None:
            doc.close()
            for p in entry.passages():
                for c in consumers:
                    c(p, index)
            entry.touch()
            m = entry.meta
            return ReadResult(state, index, doc.name, doc.kind, int(m.get("tokens", state.tokens_seen)),
                              m.get("pages"), time.perf_counter() - started, True, entry)

    from ..document import read_document

    index = DocumentIndex()
    writer = None
    if key is not None:
        try:
            writer = doc_cache.EntryWriter(*key, root=cache_root)
        except OSError as e:
            warnings.append(f"cannot write the cache ({e.strerror or e}); the document is read but not saved")

    def on_passage(p: Passage) -> None:
        index.add(p)
        if writer is not None:
            writer.add(p)
        for c in consumers:
            c(p, index)

    feed = SentenceFeed(on_passage)
    try:
        result = read_document(loaded, doc, quiet=quiet, on_chunk=feed, console=console)
        feed.finish()
        stats = result.stats
        entry = None
        if writer is not None:
            try:
                entry = writer.commit(result.state, index, {
                    "document": str(doc.name), "kind": stats.kind, "tokens": stats.tokens, "pages": stats.pages,
                    "chars": stats.chars, "bytes": stats.bytes, "sentences": index.n_sentences,
                    "model": str(loaded.header.path), "read_seconds": round(stats.seconds, 3)})
            except OSError as e:
                writer.abort()
                warnings.append(f"cannot write the cache ({e.strerror or e}); the document is read but not saved")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return ReadResult(result.state, index, stats.name, stats.kind, stats.tokens, stats.pages,
                      time.perf_counter() - started, False, entry, list(stats.warnings) + warnings, stats)
