"""Errors a user can act on: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class LeukoscopeError(Exception):
    """A problem with the user's input or environment, explained in its message."""


class ImageDecodeError(LeukoscopeError):
    """An image file that cannot be used, with the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
