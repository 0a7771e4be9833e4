"""Document text on a terminal: shown verbatim, never as markup or terminal control.

Rich markup in a string cell would be applied (or crash on "[/bold]"), and escape sequences
in a document (title changes, screen clears, OSC 52 clipboard writes) would reach the
terminal. Every string that comes from a document or a file name goes through `plain`: a
rich Text (no markup parsing) with control characters removed, newlines and tabs kept.
"""

from __future__ import annotations

import re

from rich.text import Text

# ESC-introduced sequences (CSI, OSC up to BEL or ST, and two-character escapes), then any
# other C0/C1 control character except tab and newline.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def plain(text: str, style: str = "") -> Text:
    return Text(strip_controls(text), style=style)
