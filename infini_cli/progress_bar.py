"""A token-counting progress bar on stderr, silent when quiet or when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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
