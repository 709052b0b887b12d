"""Seeds derived from the run seed, so every random stream is a pure function of its position.

Each epoch reseeds its streams from ``(seed, epoch, rank)``: a resumed run then draws exactly
what the uninterrupted run would have, on every DDP rank, without saving per-rank RNG state.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU torch generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


VIEW_AUGMENT, VIEW_CHOICE, SHUFFLE, LOADER, GLOBAL = range(5)
"""Stream tags for :func:`derive_seed`: each random stream of a run has its own seeds
(augmented views of the feature cache, the view each epoch picks, shuffling, loader workers,
torch's global RNG). Changing them changes every run's result."""
