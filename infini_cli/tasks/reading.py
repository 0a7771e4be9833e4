"""Reading a document: reader -> incremental tokenizer -> model, or the cache; one record of it.

`read_document` streams a whole document into the stream state. Nothing in it grows with the
document: the reader holds a block or a page, the tokenizer a bounded tail, the ingest loop
less than a segment, and the state is the fixed-size memory. `on_chunk` sees every token
chunk (with pages and character offsets) just before its ids enter the model.

`read_or_load` is what `read`, `ask` and `summarize` call: it also splits the chunks into
sentences with page and line, grows the lexical index, writes both to the cache entry as
the document streams by, and shows each sentence once to the task's consumers (bounded
candidate pools). On a cache hit the model does not run at all: the saved memory is loaded
and the sentences stream back from disk.

Either way the result is one record, `DocumentRead`, from which the `--json` outputs of
`read`, `ask` and `summarize` take their fields about the document and the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

from rich.console import Console

from .. import cache as doc_cache
from ..checkpoint import LoadedModel, model_hash
from ..incremental import IncrementalEncoder, TokenChunk
from ..memory import StreamState
from ..progress import ReadProgress
from ..readers import DEFAULT_BLOCK_CHARS, Document, file_sha256, open_document
from ..stream import ingest
from .passages import DocumentIndex, Passage, SentenceFeed

Consumer = Callable[[Passage, DocumentIndex], None]

# what a task stores in a cache entry beside the memory
SENTENCES, INDEX = "sentences", "index"


@dataclass
class DocumentRead:
    """A document read through the model (or loaded from the cache), and what it took."""

    state: StreamState
    name: str
    kind: str
    tokens: int
    chars: int
    bytes: int
    pages: Optional[int]  # PDFs only
    seconds: float
    cached: bool = False
    exact_tokenization: bool = True  # False if a cut may have changed ids (see incremental.py)
    warnings: list[str] = field(default_factory=list)
    index: Optional[DocumentIndex] = None  # the sentences' statistics (read_or_load only)
    # the document's sentences once more, streamed from its cache entry (None where the
    # document was not cached: a pipe, --no-cache); a second pass costs no model time
    sentences: Optional[Callable[[], Iterator[Passage]]] = field(default=None, repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        """`infini read --json`."""
        return {"name": self.name, "kind": self.kind, "tokens": self.tokens, "chars": self.chars,
                "bytes": self.bytes, "pages": self.pages, "seconds": self.seconds,
                "segments_written": self.state.segments_written, "memory_state_bytes": self.state.memory_bytes(),
                "exact_tokenization": self.exact_tokenization, "warnings": list(self.warnings),
                "cached": self.cached, "tokens_per_second": round(self.tokens_per_second, 1)}

    def run_facts(self, loaded: LoadedModel, started: float) -> dict:
        """The fields every reading task's `--json` shares: the document and the run."""
        from ..device import describe

        return {"document": self.name, "tokens": self.tokens, "pages": self.pages,
                "seconds": round(time.perf_counter() - started, 3), "read_seconds": round(self.seconds, 3),
                "cached": self.cached, "model": str(loaded.header.path), "device": describe(loaded.device)}


def generates_answers(loaded: LoadedModel) -> bool:
    """The checkpoint's capability flag: training metadata `"generates_answers": true`."""
    return loaded.header.training.get("generates_answers") is True


def read_document(
    loaded: LoadedModel,
    path: Union[str, os.PathLike[str], Document],
    password: Optional[str] = None,
    quiet: bool = False,
    on_chunk: Optional[Callable[[TokenChunk], None]] = None,
    *,
    state: Optional[StreamState] = None,
    console: Optional[Console] = None,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    max_hold: Optional[int] = None,
) -> DocumentRead:
    """Stream a document (a path, "-", or an already opened Document) through the model.

    `on_chunk` is called with each TokenChunk as it is tokenized, just before its ids enter
    the model. `state` continues an existing stream (default: a fresh one). A progress bar
    goes to `console` (stderr) unless `quiet` or it is not a terminal. Raises InputError for
    bad input; Ctrl-C propagates as KeyboardInterrupt after the file and the bar are closed.
    """
    doc = path if isinstance(path, Document) else open_document(path, password, block_chars)
    encoder = IncrementalEncoder(loaded.tokenizer) if max_hold is None else IncrementalEncoder(loaded.tokenizer, max_hold)
    if state is None:
        state = StreamState.empty(loaded.config, 1, loaded.device, loaded.dtype)
    started = time.perf_counter()

    def token_ids(chunks: Iterator[TokenChunk]) -> Iterator[list[int]]:
        for chunk in chunks:
            if on_chunk is not None:
                on_chunk(chunk)
            yield chunk.ids

    with doc, ReadProgress(doc, quiet, console) as bar:
        state = ingest(loaded.model, state, token_ids(encoder.encode_stream(doc)), on_tokens=bar.tokens)
    return DocumentRead(
        state=state,
        name=doc.name,
        kind=doc.kind,
        tokens=encoder.tokens,
        chars=encoder.chars,
        bytes=doc.bytes_read if doc.kind != "pdf" else (doc.total_bytes or 0),
        pages=doc.pages_read if doc.kind == "pdf" else None,
        seconds=time.perf_counter() - started,
        exact_tokenization=encoder.exact and encoder.inexact_cuts == 0,
        warnings=doc.warnings + encoder.warnings,
    )


def read_or_load(
    loaded: LoadedModel,
    doc: Document,
    consumers: list[Consumer],
    use_cache: bool = True,
    quiet: bool = False,
    console: Optional[Console] = None,
    cache_root=None,
    lookup: bool = True,
) -> DocumentRead:
    """Stream `doc` (already opened, so bad input failed before the model loaded) or load it.

    lookup=False always reads (`infini read` measures reading) but still saves the entry, so a
    later ask or summarize starts from it.

    Standard input and pipes are never cached: their hash is known only after reading them all.
    """
    started = time.perf_counter()
    key = None
    warnings: list[str] = []
    if use_cache and doc.kind in ("text", "pdf"):  # regular files: a pipe's hash is known only after reading
        key = (file_sha256(doc.name), model_hash(loaded.header.path))
        entry = doc_cache.lookup(*key, root=cache_root) if lookup else None
        if entry is not None:
            try:
                # everything is checked before a task sees a sentence, so a damaged entry
                # costs a re-read, never a wrong answer or a broken document
                hit = _load_entry(loaded, doc, entry)
            except Exception as e:  # any damage: truncated, mis-keyed, not finite, bad JSON
                why = (str(e).splitlines() or [type(e).__name__])[0][:120]
                warnings.append(f"the cached memory of {doc.name} was damaged ({why}); removed {entry.path} "
                                "and read the document again")
                entry.remove()
            else:
                doc.close()
                for p in _passages(entry):
                    for c in consumers:
                        c(p, hit.index)
                entry.touch()
                hit.seconds = time.perf_counter() - started
                hit.sentences = lambda: _passages(entry)
                return hit
    return _read_into_cache(loaded, doc, consumers, key, cache_root, quiet, console, warnings, started)


def _passages(entry: doc_cache.CacheEntry) -> Iterator[Passage]:
    for r in entry.records(SENTENCES):
        yield Passage.from_record(r)


def _load_entry(loaded: LoadedModel, doc: Document, entry: doc_cache.CacheEntry) -> DocumentRead:
    state = entry.load_state(loaded.config, loaded.device, loaded.dtype)
    index = DocumentIndex.from_json(entry.read_json(INDEX))
    sum(1 for _ in _passages(entry))  # a damaged sentences file fails here, before any consumer
    m = entry.meta
    return DocumentRead(state, doc.name, doc.kind, int(m.get("tokens", state.tokens_seen)), int(m.get("chars", 0)),
                        int(m.get("bytes", 0)), m.get("pages"), 0.0, cached=True,
                        exact_tokenization=bool(m.get("exact_tokenization", True)), index=index)


def _read_into_cache(loaded: LoadedModel, doc: Document, consumers: list[Consumer], key: Optional[tuple[str, str]],
                     cache_root, quiet: bool, console: Optional[Console], warnings: list[str],
                     started: float) -> DocumentRead:
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
            writer.add_record(SENTENCES, p.as_record())
        for c in consumers:
            c(p, index)

    feed = SentenceFeed(on_passage)
    try:
        read = read_document(loaded, doc, quiet=quiet, on_chunk=feed, console=console)
        feed.finish()
        if writer is not None:
            try:
                entry = writer.commit(read.state, {INDEX: index.to_json()}, {
                    "document": str(doc.name), "kind": read.kind, "tokens": read.tokens, "pages": read.pages,
                    "chars": read.chars, "bytes": read.bytes, "sentences": index.n_sentences,
                    "exact_tokenization": read.exact_tokenization, "model": str(loaded.header.path),
                    "read_seconds": round(read.seconds, 3)})
                read.sentences = lambda: _passages(entry)
            except OSError as e:
                writer.abort()
                warnings.append(f"cannot write the cache ({e.strerror or e}); the document is read but not saved")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    read.index = index
    read.warnings = list(read.warnings) + warnings
    read.seconds = time.perf_counter() - started
    return read

