"""How long-running library functions report progress without knowing who draws it.

A workflow with several stages (say, ``leukoscope.release``) takes a :data:`TrackerFactory`
and opens one :class:`Tracker` per stage; the command line passes Rich progress bars
(``leukoscope.cli.console.progress_bar``), tests and scripts :func:`no_tracker`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass


def _ignore(n: int | None) -> None:
    """Progress nobody watches."""


@dataclass(frozen=True)
class Tracker:
    """Callbacks of one stage: ``set_total(n)`` once the number of items is known (it may be
    known only after the stage began), ``advance(n)`` after every ``n`` finished items."""

    set_total: Callable[[int | None], None] = _ignore
    advance: Callable[[int], None] = _ignore


TrackerFactory = Callable[[str, int | None], AbstractContextManager[Tracker]]
"""Opens the tracker of a stage from its description and total (None: not known yet)."""


@contextmanager
def no_tracker(description: str, total: int | None = None) -> Iterator[Tracker]:
    """A :data:`TrackerFactory` that reports nothing."""
    yield Tracker()
