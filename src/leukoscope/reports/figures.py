"""Writing matplotlib figures for reports: laid out, saved atomically as PNG, and closed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from leukoscope.fileio import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` as PNG (never half-written) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return Path(path)
