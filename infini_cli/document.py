"""Reader -> incremental tokenizer -> model: a whole document into the stream state.

Nothing here grows with the document: the reader holds a block or a page, the tokenizer a
bounded tail, the ingest loop less than a segment, and the state is the fixed-size memory.
`ask` and `summarize` build on this: `on_chunk` shows them every token chunk, with pages
and character offsets, as it streams by.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Union

from rich.console import Console

from .checkpoint import LoadedModel
from .incremental import TokenChunk
from .memory import StreamState
from .progress import ReadProgress
from .readers import DEFAULT_BLOCK_CHARS, Document, open_document
from .stream import ingest


@dataclass
class ReadStats:
    name: str
    kind: str
    tokens: int
    chars: int
    bytes: int
    pages: Optional[int]  # PDFs only
    seconds: float
    segments_written: int
    memory_state_bytes: int
    exact_tokenization: bool  # False if a cut may have changed ids (see incremental.py)
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


@dataclass
class DocumentStream:
    """The state after the whole document, and what it took to get there."""

    state: StreamState
    stats: ReadStats


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
) -> DocumentStream:
    """Stream a document (a path, "-", or an already opened Document) through the model.

    `on_chunk` is called with each TokenChunk as it is tokenized, just before its ids enter
    the model. `state` continues an existing stream (default: a fresh one). A progress bar
    goes to `console` (stderr) unless `quiet` or it is not a terminal. Raises InputError for
    bad input; Ctrl-C propagates as KeyboardInterrupt after the file and the bar are closed.
    """
    doc = path if isinstance(path, Document) else open_document(path, password, block_chars)
    encoder = loaded.tokenizer.incremental(max_hold)
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
    seconds = time.perf_counter() - started
    stats = ReadStats(
        name=doc.name,
        kind=doc.kind,
        tokens=encoder.tokens,
        chars=encoder.chars,
        bytes=doc.bytes_read if doc.kind != "pdf" else (doc.total_bytes or 0),
        pages=doc.pages_read if doc.kind == "pdf" else None,
        seconds=seconds,
        segments_written=state.segments_written,
        memory_state_bytes=state.memory_bytes(),
        exact_tokenization=encoder.exact and encoder.inexact_cuts == 0,
        warnings=doc.warnings + encoder.warnings,
    )
    return DocumentStream(state, stats)
