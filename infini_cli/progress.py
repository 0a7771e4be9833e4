"""Progress bars on stderr: reading a document (pages or MB read, tokens, tokens/s, ETA) and
counting tokens of a known total (the passkey and BABILong grids).

They draw on stderr only, so stdout stays clean for --json and pipes, and only when stderr
is a terminal: logs and CI output get no carriage-return noise.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from .readers import Document

MB = 1024 * 1024


class _ReadColumn(ProgressColumn):
    """'12/300 pages' for PDFs, '1.2/500.0 MB' for text (no total for standard input)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "MB")
        if unit == "pages":
            total = f"/{task.total:,.0f}" if task.total is not None else ""
            return Text(f"{task.completed:,.0f}{total} pages")
        total = f"/{task.total / MB:,.1f}" if task.total is not None else ""
        return Text(f"{task.completed / MB:,.1f}{total} MB")


class _TokensColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        tokens = task.fields.get("tokens", 0)
        elapsed = task.elapsed or 0.0
        rate = f"{tokens / elapsed:,.0f}" if elapsed > 0 else "-"
        return Text(f"{tokens:,} tokens  {rate} tok/s")


class ReadProgress:
    """Context manager; call `tokens(n)` as tokens are consumed. A no-op when disabled."""

    def __init__(self, doc: Document, quiet: bool = False, console: Optional[Console] = None) -> None:
        self.doc = doc
        self.console = console or Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self.by_pages = doc.kind == "pdf"
        self.total_tokens = 0
        self.started = time.perf_counter()
        self._progress: Optional[Progress] = None
        self._task = None

    def __enter__(self) -> "ReadProgress":
        self.started = time.perf_counter()
        if not self.enabled:
            return self
        total = self.doc.total_pages if self.by_pages else self.doc.total_bytes
        columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(), _ReadColumn(), _TokensColumn()]
        if total is not None:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=self.console, transient=True, refresh_per_second=4)
        self._progress.start()
        self._task = self._progress.add_task(_short(self.doc.name), total=total, tokens=0,
                                             unit="pages" if self.by_pages else "MB")
        return self

    def tokens(self, n: int) -> None:
        self.total_tokens += n
        if self._progress is not None:
            done = self.doc.pages_read if self.by_pages else self.doc.bytes_read
            self._progress.update(self._task, completed=done, tokens=self.total_tokens)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _short(name: str, width: int = 30) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


@contextmanager
def token_progress(total: int, label: str, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """Yields advance(n); the bar shows tokens done of total, tokens/s and the time left."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f} tok/s")

        yield advance
