"""Errors a user can act on: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class LeukoscopeError(Exception):
    """A problem with the user's input or environment, explained in its message."""


class ImageDecodeError(LeukoscopeError):
    """An image file that cannot be used, with the file, the reason and the kind of problem.

    ``kind`` is one of ``zero_byte``, ``non_image``, ``truncated``, ``too_large`` or
    ``unreadable``, so callers (audit, HTTP service) can act on it without parsing messages.
    """

    def __init__(self, path: str | Path, reason: str, kind: str = "unreadable") -> None:
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")
