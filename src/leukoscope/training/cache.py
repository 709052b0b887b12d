"""Arrays computed once and memory-mapped from disk: decoded images and frozen features.

Decoding and resizing a JPEG costs more than the upper layers of a small CNN, and the frozen
lower layers cost more still, so both are done once. Each array is an ``.npy`` file written
under a temporary name and renamed into place, then committed by a JSON sidecar written last:
an interrupted build leaves no array that looks complete. A lock file beside it makes
concurrent runs on the same data (two archs trained at once) wait for one build and share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import Dataset

from leukoscope.data.datasets import Sample, make_loader
from leukoscope.data.preprocess import Preprocessing, pixels_dataset
from leukoscope.fileio import atomic_write_json, cache_dir
from leukoscope.training.engine import Advance
from leukoscope.training.seeding import derive_seed

FORMAT_VERSION = 2
"""2: pixels from :func:`leukoscope.data.preprocess.to_pixels` (Pillow's resize, as prediction),
no longer torchvision's, which differs by a grey level here and there."""


def _load_complete(
    path: Path, shape: tuple[int, ...], dtype: np.dtype[Any] | type
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The committed array at ``path`` and its metadata, if it has this shape and dtype."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    array = np.load(path, mmap_mode="r")
    if array.shape != shape or array.dtype != np.dtype(dtype):
        return None
    return array, meta


def cached_array(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | type,
    fill: Callable[[np.ndarray], dict[str, Any]],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Memory-map ``path`` if it was completed before; otherwise create it, let ``fill`` write
    it (returning the sidecar's metadata) and commit it. Returns the read-only array and meta."""
    done = _load_complete(path, shape, dtype)
    if done is not None:
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        done = _load_complete(path, shape, dtype)  # built by another run while we waited
        if done is not None:
            return done
        meta_path = path.with_suffix(".json")
        meta_path.unlink(missing_ok=True)  # uncommit the old array before replacing it
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed build
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            meta = fill(array)
            array.flush()
            del array
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        atomic_write_json(meta_path, meta)
    return np.load(path, mmap_mode="r"), meta


@dataclass
class ImageCache:
    """Decoded, resized uint8 images of one split; rows of unreadable files stay zero."""

    images: np.ndarray
    """(N, 3, S, S) uint8, one row per sample: :func:`~leukoscope.data.preprocess.to_pixels`
    transposed to channels first, as the augmentation works on."""
    rows: np.ndarray
    """Indices of the usable rows."""
    labels: np.ndarray
    """Labels of the usable rows."""
    skipped: list[tuple[str, str]]
    """(path, reason) of every unreadable file."""


def image_cache_key(
    manifest_sha256: str, split: str, classes: Sequence[str], preprocessing: Preprocessing
) -> str:
    """Cache name for one split of one manifest, made with one preprocessing (whose
    normalisation is not part of the pixels, and so not of the key)."""
    pixels = f"{preprocessing.input_size}:{preprocessing.interpolation}:{preprocessing.framing}"
    text = f"v{FORMAT_VERSION}:{manifest_sha256}:{split}:{','.join(classes)}:{pixels}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def build_image_cache(
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    key: str,
    *,
    workers: int,
    advance: Advance = lambda n: None,
) -> ImageCache:
    """Decode every sample once into the pixels prediction would give the model
    (:func:`~leukoscope.data.preprocess.pixels_dataset`), as ``cache_dir()/images/<key>.npy``;
    reuse it when present."""
    size = preprocessing.input_size
    valid = np.zeros(len(samples), dtype=bool)

    def fill(array: np.ndarray) -> dict[str, Any]:
        dataset = pixels_dataset(samples, preprocessing)
        skipped: list[tuple[str, str]] = []
        for batch in make_loader(dataset, batch_size=64, workers=workers):
            for index, message in batch.errors:
                skipped.append((str(samples[index].path), message))
            if len(batch.indices):
                array[batch.indices.numpy()] = batch.images.permute(0, 3, 1, 2).numpy()
                valid[batch.indices.numpy()] = True
            advance(len(batch.indices) + len(batch.errors))
        return {"rows": np.flatnonzero(valid).tolist(), "skipped": skipped}

    path = cache_dir() / "images" / f"{key}.npy"
    images, meta = cached_array(path, (len(samples), 3, size, size), np.uint8, fill)
    if not valid.any() and meta["rows"]:  # decoded by an earlier run
        advance(len(samples))
    rows = np.asarray(meta["rows"], dtype=np.int64)
    labels = np.asarray([samples[i].label for i in rows], dtype=np.int64)
    skipped = [(path_, reason) for path_, reason in meta["skipped"]]
    return ImageCache(images, rows, labels, skipped)


Target = int | torch.Tensor
"""What a training item is scored against: a class index, or a row of probabilities (the soft
targets of :mod:`~leukoscope.training.distill`)."""


def target(targets: np.ndarray, index: int) -> Target:
    """Item ``index`` of class indices (N,) or probability rows (N, C), as the loss takes it."""
    if targets.ndim == 1:
        return int(targets[index])
    return torch.from_numpy(np.asarray(targets[index], dtype=np.float32))


class ImageDataset(Dataset[tuple[torch.Tensor, Target]]):
    """The usable rows of an :class:`ImageCache`, transformed on every access.

    With ``stream``, the randomness of item ``i`` comes from ``derive_seed(*stream, i)``, so
    the result depends neither on batching nor on which worker process made it. ``targets``
    (aligned with the usable rows) replace the cache's labels, e.g. a teacher's soft targets.
    """

    def __init__(
        self,
        cache: ImageCache,
        transform: Callable[[torch.Tensor], torch.Tensor],
        stream: tuple[int, ...] | None = None,
        targets: np.ndarray | None = None,
    ) -> None:
        self.cache = cache
        self.transform = transform
        self.stream = stream
        self.targets = cache.labels if targets is None else targets

    def __len__(self) -> int:
        return len(self.cache.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = torch.from_numpy(np.array(self.cache.images[self.cache.rows[index]]))
        label = target(self.targets, index)
        if self.stream is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(*self.stream, index))
            return self.transform(image), label


@torch.no_grad()
def compute_features(
    out: np.ndarray,
    batches: Callable[[int], Iterable[torch.Tensor]],
    network: nn.Module,
    device: torch.device,
    advance: Advance,
) -> None:
    """Fill ``out[view]`` with ``network``'s output for the inputs ``batches(view)`` yields,
    in order."""
    network.eval()
    for view in range(out.shape[0]):
        start = 0
        for inputs in batches(view):
            features = network(inputs.to(device))
            out[view, start : start + len(features)] = features.half().cpu().numpy()
            start += len(features)
            advance(len(features))


class FeatureDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Cached frozen features with ``views`` rows per image; each epoch picks one view per
    image from a stream seeded by the epoch (see :meth:`set_epoch`). ``labels`` are class
    indices or probability rows (see :func:`target`)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = features
        self.labels = labels
        self.views = np.zeros(len(labels), dtype=np.int64)

    def set_epoch(self, generator: np.random.Generator) -> None:
        """Draw this epoch's view of every image."""
        self.views = generator.integers(self.features.shape[0], size=len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        row = np.asarray(self.features[self.views[index], index], dtype=np.float32)
        return torch.from_numpy(row), target(self.labels, index)
