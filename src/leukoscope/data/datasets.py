"""Samples from manifests or folders, a PyTorch dataset that survives bad files, and loaders.

A corrupt image must never kill a training or prediction job: :class:`CellImageDataset` turns
decode failures into error entries, and :func:`collate_skipping_errors` drops them from the
batch while keeping the message, so the caller can report every skipped file at the end.

torch is imported only by the functions that build tensors and loaders: finding and listing
images (what ``leukoscope predict`` needs before an exported model runs) does without it.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from leukoscope.classes import PBC8
from leukoscope.data.images import DEFAULT_MAX_PIXELS, decode_rgb, is_image_name
from leukoscope.data.scan import find_class_folders
from leukoscope.data.split import MANIFEST_COLUMNS, SPLITS
from leukoscope.errors import ImageDecodeError, LeukoscopeError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

UNLABELLED = -1


@dataclass(frozen=True)
class Sample:
    """One image to load: its path and class index (``UNLABELLED`` when unknown)."""

    path: Path
    label: int = UNLABELLED


def order_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """Canonical class order: PBC order first, then any others alphabetically."""
    unique = set(labels)
    known = [c for c in PBC8 if c in unique]
    return (*known, *sorted(unique - set(known)))


def read_manifest_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a split manifest as dicts; a clear error if it is missing or malformed."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise LeukoscopeError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LeukoscopeError(f"{path}: cannot read manifest ({exc})") from None
    if not rows or not set(MANIFEST_COLUMNS) <= set(rows[0]):
        raise LeukoscopeError(
            f"{path}: not a leukoscope manifest (needs columns {', '.join(MANIFEST_COLUMNS)})"
        )
    return rows


def read_manifest(
    path: str | Path, split: str | None = None, classes: Sequence[str] | None = None
) -> tuple[list[Sample], tuple[str, ...]]:
    """Read a split manifest; relative image paths are resolved against the manifest's folder.

    ``classes`` fixes the class order (e.g. a model's); by default it is all labels in the
    manifest, in PBC order, so every split of one manifest shares the same indices.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise LeukoscopeError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    rows = read_manifest_rows(path)
    labels = order_classes([r["label"] for r in rows]) if classes is None else tuple(classes)
    index = {label: i for i, label in enumerate(labels)}
    samples: list[Sample] = []
    for row in rows:
        if split is not None and row["split"] != split:
            continue
        if row["label"] not in index:
            continue
        samples.append(Sample(path.parent / row["path"], index[row["label"]]))
    if not samples:
        raise LeukoscopeError(f"{path}: no images for split {split!r} and classes {labels}")
    return samples, labels


def samples_from_folder(
    root: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[Sample], tuple[str, ...]]:
    """Labelled samples from a folder of class folders (any known spelling of the names).

    With ``classes`` (e.g. a model's), folders of other classes are ignored and a subset of
    the classes is fine; without, every recognised class folder is used.
    """
    found = find_class_folders(root)
    labels = order_classes(list(found.folders)) if classes is None else tuple(classes)
    index = {label: i for i, label in enumerate(labels)}
    samples = [
        Sample(p, index[label])
        for label, dirs in found.folders.items()
        if label in index
        for folder in dirs
        for p in sorted(folder.rglob("*"))
        if p.is_file() and is_image_name(p)
    ]
    if not samples:
        raise LeukoscopeError(f"{root}: no images of the classes {', '.join(labels)}")
    return sorted(samples, key=lambda s: s.path), labels


def _folder_images(folder: Path, skipped: list[str]) -> list[Path]:
    """Image files under ``folder``; a message in ``skipped`` for each link not followed (to a
    folder, or leading nowhere: dangling or looping), which would otherwise vanish."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not path.exists():
            skipped.append(
                f"{path}: link to {os.readlink(path)} leads nowhere (dangling or a loop)"
            )
        elif path.is_symlink() and path.is_dir():
            skipped.append(f"{path}: link to a folder, not followed (pass the folder itself)")
        elif path.is_file() and is_image_name(path):
            found.append(path)
    return found


def samples_from_paths(
    inputs: Sequence[str | Path], skipped: list[str] | None = None
) -> list[Sample]:
    """Unlabelled samples from files, folders (searched recursively) and glob patterns; links
    inside folders that were not followed are described in ``skipped`` when given."""
    samples: list[Sample] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = _folder_images(path, [] if skipped is None else skipped)
        elif path.exists():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise LeukoscopeError(f"{item}: no such file, folder or matching files")
        samples.extend(Sample(p) for p in matches)
    return samples


def evenly_spaced(samples: Sequence[Sample], per_class: int) -> list[Sample]:
    """At most ``per_class`` samples of each label, evenly spaced through the list, labels in
    order of first appearance.

    Every subset drawn to fit, check or show something (the abstention fit, int8 calibration,
    the demo, the unknown-class inputs) is drawn this one way, so that its images spread over
    the whole of each class (sorted lists: over its folders and file names).

    >>> [s.path.name for s in evenly_spaced([Sample(Path(str(i)), 0) for i in range(10)], 3)]
    ['0', '4', '8']
    """
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    return [
        s
        for group in by_label.values()
        for s in group[:: max(1, math.ceil(len(group) / per_class))][:per_class]
    ]


@dataclass
class CellImageDataset:
    """Decodes samples on demand; a bad file yields an ``error`` entry instead of raising
    (a map-style dataset, as :class:`torch.utils.data.DataLoader` takes them).

    ``transform`` returns the image's tensor, or the tensor and a note on it (for example that
    no cell was found to frame), which the batch carries in :attr:`Batch.notes`.
    """

    samples: Sequence[Sample]
    transform: Callable[[Image.Image], torch.Tensor | tuple[torch.Tensor, str | None]]
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_size: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            image = decode_rgb(sample.path, max_pixels=self.max_pixels, draft_size=self.draft_size)
        except ImageDecodeError as exc:
            return {"index": index, "error": str(exc)}
        out = self.transform(image)
        tensor, note = out if isinstance(out, tuple) else (out, None)
        item = {"index": index, "image": tensor, "label": sample.label}
        return item if note is None else item | {"note": note}


@dataclass
class Batch:
    """A collated batch; ``errors`` lists ``(index, message)`` of samples that failed,
    ``notes`` maps the index of a readable sample to the note its transform made on it."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    errors: list[tuple[int, str]]
    notes: dict[int, str] = field(default_factory=dict)


def collate_skipping_errors(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack the good items; keep the failed ones as messages."""
    import torch

    good = [item for item in items if "error" not in item]
    errors = [(item["index"], item["error"]) for item in items if "error" in item]
    images = torch.stack([item["image"] for item in good]) if good else torch.empty(0)
    return Batch(
        images=images,
        labels=torch.tensor([item["label"] for item in good], dtype=torch.long),
        indices=torch.tensor([item["index"] for item in good], dtype=torch.long),
        errors=errors,
        notes={item["index"]: item["note"] for item in good if "note" in item},
    )


def make_loader(
    dataset: CellImageDataset,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    workers: int = 2,
    seed: int = 0,
) -> DataLoader[dict[str, Any]]:
    """A loader with parallel decoding that never stops on a bad image."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,  # type: ignore[arg-type]  # any map-style dataset will do
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skipping_errors,
        generator=generator,
        persistent_workers=False,
    )
