"""Data layer: decoding, dataset scans and audits, leakage-free splits, loaders, download."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATASET = "../shared/data/pbc"
"""Where the PBC dataset lies beside a checkout of the repository."""


def default_dataset_dir() -> Path:
    """The dataset commands and benchmarks use by default: ``$LEUKOSCOPE_DATA``, else
    ``../shared/data/pbc`` (relative to the working folder)."""
    return Path(os.environ.get("LEUKOSCOPE_DATA") or DEFAULT_DATASET)
