"""The training loop's DataLoader: seeded, sharded across processes, reshuffled per epoch.

Unlike the decoding loaders of :func:`leukoscope.data.datasets.make_loader` (files that may be
corrupt, in order), these read the run's caches, whose rows are all readable, and must give the
same batches whether the run is resumed or not: every random choice comes from a generator
seeded by (seed, stream, epoch, rank), never from the global RNG.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from leukoscope.training.distributed import DistContext
from leukoscope.training.seeding import LOADER, SHUFFLE, derive_seed, seeded_generator


def epoch_loader(
    dataset: Dataset[Any],
    ctx: DistContext,
    *,
    seed: int,
    batch_size: int,
    train: bool,
    epoch: int,
    workers: int,
) -> DataLoader[Any]:
    """Training (``train``): this rank's shuffled shard, reshuffled per epoch. Otherwise: all
    rows in order, in batches twice as large (no gradients to hold)."""
    sampler: DistributedSampler[Any] | None = None
    if train:
        sampler = DistributedSampler(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=derive_seed(seed, SHUFFLE),
        )
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size if train else 2 * batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=seeded_generator(seed, LOADER, epoch, ctx.rank),
        drop_last=sampler is not None and len(sampler) > batch_size,
        pin_memory=ctx.device.type == "cuda",
    )
