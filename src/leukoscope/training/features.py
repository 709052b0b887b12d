"""Caching the frozen part of the network: its outputs are computed once per run, not per epoch.

While a phase trains only the upper stages, the lower ones compute the same features for an
image every epoch. With a profile's ``cached_views`` set, their outputs at each phase's cut are
computed once into the run directory (float16, memory-mapped): the original image as view 0
and augmented views after it, one of which each epoch picks. The lowest cut is computed from
images, each higher one from the cut below it. In a distributed run rank 0 computes them and the
other ranks then map them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoscope.training.cache import ImageCache, ImageDataset, cached_array, compute_features
from leukoscope.training.chain import ModelChain
from leukoscope.training.distributed import DistContext
from leukoscope.training.engine import ProgressFactory
from leukoscope.training.loader import epoch_loader
from leukoscope.training.seeding import VIEW_AUGMENT

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureSplit:
    """One split to cache: its decoded images and how many views of each."""

    name: str
    images: ImageCache
    views: int


@dataclass(frozen=True)
class FeatureCacher:
    """Computes (or maps, when an earlier invocation finished them) a run's feature caches.

    ``plain`` makes view 0 and ``augment`` the others, each image from its own seeded stream
    (:class:`~leukoscope.training.cache.ImageDataset`), so a resumed run gets the same views.
    """

    chain: ModelChain
    ctx: DistContext
    folder: Path
    seed: int
    batch_size: int
    workers: int
    plain: Transform
    augment: Transform
    progress: ProgressFactory

    def build(
        self, cuts: Sequence[int], splits: Sequence[FeatureSplit]
    ) -> dict[tuple[str, int], np.ndarray]:
        """Outputs of the frozen part at every cut in ``cuts``, keyed by (split name, cut)."""
        cuts = sorted(set(cuts))
        out: dict[tuple[str, int], np.ndarray] = {}
        for split in splits:
            below: np.ndarray | None = None
            for low, cut in zip([0, *cuts], cuts, strict=False):
                path = self.folder / f"{split.name}-cut{cut}.npy"
                if self.ctx.is_main:
                    # Only the deepest cut gets every view: the shallower phases (the head
                    # warm-up) are short, and each view costs another pass through the stages.
                    views = split.views if below is None else 1
                    self._array(path, split.images, views, low, cut, below)
                self.ctx.barrier()
                below = out[split.name, cut] = np.load(path, mmap_mode="r")
        return out

    def _array(
        self,
        path: Path,
        data: ImageCache,
        views: int,
        low: int,
        cut: int,
        below: np.ndarray | None,
    ) -> None:
        """Cache chain layers ``low:cut`` applied to ``below`` (or to the images if None)."""

        def batches(view: int) -> Iterable[torch.Tensor]:
            if below is not None:
                return _array_batches(below[view], self.batch_size)
            # Images in worker processes (one thread each: per-image ops are small).
            transform = self.plain if view == 0 else self.augment
            dataset = ImageDataset(data, transform, (self.seed, VIEW_AUGMENT, view))
            loader = epoch_loader(
                dataset,
                self.ctx,
                seed=self.seed,
                batch_size=self.batch_size,
                train=False,
                epoch=0,
                workers=self.workers,
            )
            return (inputs for inputs, _ in loader)

        with torch.no_grad():
            example = torch.zeros(1, *data.images.shape[1:], device=self.ctx.device)
            feature_shape = self.chain.part(0, cut).eval()(example).shape[1:]
        network = self.chain.part(low, cut)

        def fill(array: np.ndarray) -> dict[str, Any]:
            started = time.perf_counter()
            label = f"Caching {path.stem} features"
            with self.progress(label, array.shape[0] * array.shape[1]) as advance:
                compute_features(array, batches, network, self.ctx.device, advance)
            logger.info(
                "cached %s features %s in %.0f s",
                path.stem,
                "x".join(map(str, array.shape)),
                time.perf_counter() - started,
            )
            return {"views": array.shape[0], "cut": cut}

        cached_array(path, (views, len(data.rows), *feature_shape), np.float16, fill)


def _array_batches(array: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(array), batch_size):
        yield torch.from_numpy(np.asarray(array[start : start + batch_size], np.float32))
