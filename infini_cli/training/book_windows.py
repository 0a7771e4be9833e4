"""Random windows of sentences from the training books, for synthetic haystacks in training.

Each book is read once and kept; a window is drawn as (book, character offset), in that order
from the caller's rng, so a training step's data depends on its seed alone.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..tasks.passkey_prompt import split_sentences


class BookWindows:
    def __init__(self, book_paths: list[str]) -> None:
        self.book_paths = book_paths
        self._texts: dict[str, str] = {}

    def draw(self, rng: random.Random, chars: int, empty: str) -> tuple[str, list[str]]:
        """(book path, whole sentences of a random window of `chars` characters); the window's
        cut first and last sentences are dropped, and `empty` stands in for a window without any."""
        path = rng.choice(self.book_paths)
        if path not in self._texts:
            self._texts[path] = Path(path).read_text(encoding="utf-8", errors="replace")
        text = self._texts[path]
        start = rng.randrange(max(1, len(text) - chars))
        return path, split_sentences(text[start:start + chars])[1:-1] or [empty]
