"""The ``leukoscope`` command line: one Typer app, one sub-module per command group.

Every command fails with a non-zero exit code and a one-line message; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

from leukoscope.cli.app import app, main

__all__ = ["app", "main"]
