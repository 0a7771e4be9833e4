"""infini: read documents of any length with an Infini-Transformer."""

__version__ = "0.1.0"
