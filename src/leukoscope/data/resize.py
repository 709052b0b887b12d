"""Resized copies of a manifest's images, small enough to ship to a training machine.

The copy is resized by :func:`leukoscope.data.preprocess.resize`, as training and evaluation
resize (a bilinear, antialiased square), so a model trained from it at the same size sees the
pixels it would see from the originals, apart from the lossy encoding. Its manifest keeps
every label and split; unreadable images are listed, not copied.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from leukoscope.classes import canonical_class
from leukoscope.data.datasets import CellImageDataset, Sample, make_loader, read_manifest_rows
from leukoscope.data.preprocess import resize
from leukoscope.data.split import SPLITS, Excluded, ManifestRow, SplitResult, write_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes

FORMATS: dict[str, str] = {"webp": ".webp", "jpeg": ".jpg", "png": ".png"}


@dataclass
class ResizeResult:
    manifest: Path
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of every unreadable source image, also listed in the copy's
    ``manifest.excluded.csv``."""


@dataclass(frozen=True)
class _Resized:
    """An image as the dataset decodes it (RGB, :func:`~leukoscope.data.images.decode_rgb`)
    resized to a ``size`` square, as a uint8 (H, W, 3) tensor (a class, not a closure, so that
    loader workers can pickle it)."""

    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(resize(image, self.size).copy())


def encode_image(image: torch.Tensor, fmt: str, quality: int) -> bytes:
    """uint8 (H, W, 3) tensor -> encoded file bytes (``quality`` is ignored by lossless PNG)."""
    buffer = io.BytesIO()
    pil = Image.fromarray(image.numpy())
    if fmt == "png":
        pil.save(buffer, "PNG")
    else:
        pil.save(buffer, fmt.upper(), quality=quality)
    return buffer.getvalue()


def resize_manifest(
    manifest: Path,
    out_dir: Path,
    *,
    size: int,
    splits: Sequence[str] = SPLITS,
    fmt: str = "webp",
    quality: int = 90,
    workers: int = 2,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ResizeResult:
    """Write ``out_dir/<label>/<name>`` for each image of ``splits`` and
    ``out_dir/manifest.csv`` describing the copy."""
    if fmt not in FORMATS:
        raise LeukoscopeError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise LeukoscopeError(f"unknown split(s) {', '.join(unknown)}: use {', '.join(SPLITS)}")
    rows = [row for row in read_manifest_rows(manifest) if row["split"] in splits]
    if not rows:
        raise LeukoscopeError(f"{manifest}: no images in split(s) {', '.join(splits)}")
    # The label becomes a folder name: one that is not a class (``../x``) would write elsewhere.
    unknown_labels = sorted(
        {row["label"] for row in rows if canonical_class(row["label"]) != row["label"]}
    )
    if unknown_labels:
        raise LeukoscopeError(
            f"{manifest}: label(s) {', '.join(map(repr, unknown_labels))} are not cell classes"
        )
    targets = [f"{row['label']}/{Path(row['path']).stem}{FORMATS[fmt]}" for row in rows]
    if len(set(targets)) != len(targets):
        raise LeukoscopeError(f"{manifest}: two images of one class share a file name")
    if on_total:
        on_total(len(rows))
    samples = [Sample(manifest.parent / row["path"]) for row in rows]
    written: list[ManifestRow] = []
    excluded: list[Excluded] = []
    loader = make_loader(CellImageDataset(samples, _Resized(size)), batch_size=32, workers=workers)
    for batch in loader:
        for index, message in batch.errors:
            source = os.path.relpath(samples[index].path, out_dir)
            excluded.append(Excluded(source, rows[index]["label"], message))
        for index, image in zip(batch.indices.tolist(), batch.images, strict=True):
            data = encode_image(image, fmt, quality)
            atomic_write_bytes(out_dir / targets[index], data)
            digest = hashlib.sha256(data).hexdigest()
            row = rows[index]
            written.append(ManifestRow(targets[index], row["label"], row["split"], digest))
        if on_progress:
            on_progress(len(batch.indices) + len(batch.errors))
    out = out_dir / "manifest.csv"
    written.sort(key=lambda r: r.path)
    write_manifest(SplitResult(rows=written, excluded=excluded), out_dir, out)
    skipped = [(e.path, e.reason) for e in excluded]
    return ResizeResult(manifest=out, written=len(written), skipped=skipped)
