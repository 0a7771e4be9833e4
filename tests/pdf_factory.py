"""PDFs made on the spot (fpdf2, a test-only dependency) with known text on known pages."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def page_text(number: int) -> str:
    """The known text of page `number`: its number appears in it as a word and as digits."""
    return f"Page {number} of the report. The committee met on day {number} and kept minute{number} safe."


def make_pdf(path: Path, pages: int = 3, texts: Optional[Sequence[str]] = None) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for i in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, texts[i] if texts is not None else page_text(i + 1))
    pdf.output(str(path))
    return path


def make_blank_pdf(path: Path) -> Path:
    """A page with only a drawn rectangle: a PDF without a text layer, like a scan."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 80, 50, style="F")
    pdf.output(str(path))
    return path


def encrypt_pdf(src: Path, dst: Path, user_password: str) -> Path:
    """RC4-128 so that no cryptography package is needed to read it back."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=str(src))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    with open(dst, "wb") as f:
        writer.write(f)
    return dst
