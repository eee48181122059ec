"""The bench package's exceptions: one tree, rooted in RuntimeError."""

from __future__ import annotations

__all__ = ["BenchError", "LoadgenError"]


class BenchError(RuntimeError):
    """A benchmark step could not run; the message says what to check."""


class LoadgenError(BenchError):
    """The load generator could not do what it was asked; the message says what to check."""
