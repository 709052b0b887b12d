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
