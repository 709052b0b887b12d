"""``data resize``: a smaller copy that trains like the original and keeps labels and splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.datasets import read_manifest, read_manifest_rows
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import Preprocessing, to_pixels
from leukoscope.data.resize import resize_manifest
from leukoscope.data.split import split_folder, write_manifest
from leukoscope.errors import LeukoscopeError


@pytest.fixture
def dataset(tmp_path: Path, make_image: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for c, label in enumerate(("basophil", "lymphocyte")):
        for i in range(8):
            make_image(root / label / f"{label[:2]}_{i}.jpg", seed=10 * c + i, size=120)
    result = split_folder(root, ("basophil", "lymphocyte"), seed=0, val=0.25, test=0.25)
    write_manifest(result, root, tmp_path / "manifest.csv")
    return tmp_path / "manifest.csv"


def test_copy_keeps_labels_splits_and_training_pixels(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    result = resize_manifest(dataset, out, size=64, splits=("train", "val"), fmt="png", workers=0)
    source = {Path(r["path"]).stem: r for r in read_manifest_rows(dataset)}
    rows = read_manifest_rows(result.manifest)
    assert result.written == len(rows) == sum(r["split"] != "test" for r in source.values())
    for row in rows:
        original = source[Path(row["path"]).stem]
        assert (row["label"], row["split"]) == (original["label"], original["split"])
    # Lossless copy: exactly the pixels training would resize the original to.
    first = rows[0]
    original = decode_rgb(dataset.parent / source[Path(first["path"]).stem]["path"])
    expected = to_pixels(original, Preprocessing(64, (0.5,) * 3, (0.5,) * 3))
    copied = np.asarray(decode_rgb(out / first["path"]))
    assert np.array_equal(copied, expected)
    samples, classes = read_manifest(result.manifest, "train")
    assert classes == ("basophil", "lymphocyte") and samples


def test_lossy_webp_copy_is_small_and_close(dataset: Path, tmp_path: Path) -> None:
    result = resize_manifest(dataset, tmp_path / "copy", size=64, fmt="webp", quality=90, workers=0)
    row = read_manifest_rows(result.manifest)[0]
    image = np.asarray(decode_rgb(tmp_path / "copy" / row["path"]), dtype=np.float64)
    assert image.shape == (64, 64, 3) and row["path"].endswith(".webp")
    original = next(r for r in read_manifest_rows(dataset) if Path(r["path"]).stem in row["path"])
    pixels = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    expected = to_pixels(decode_rgb(dataset.parent / original["path"]), pixels)
    assert np.abs(image - expected).mean() < 6


def test_unreadable_images_are_listed_not_fatal(dataset: Path, tmp_path: Path) -> None:
    rows = read_manifest_rows(dataset)
    broken = dataset.parent / rows[0]["path"]
    broken.write_bytes(b"not an image")
    result = resize_manifest(dataset, tmp_path / "copy", size=32, workers=0)
    assert result.written == len(rows) - 1
    assert len(result.skipped) == 1 and broken.name in result.skipped[0][0]
    excluded = (tmp_path / "copy" / "manifest.excluded.csv").read_text()
    assert broken.name in excluded


def test_bad_arguments_name_the_problem(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(LeukoscopeError, match="unknown format"):
        resize_manifest(dataset, tmp_path / "copy", size=32, fmt="gif")
    with pytest.raises(LeukoscopeError, match="unknown split"):
        resize_manifest(dataset, tmp_path / "copy", size=32, splits=("training",))
    with pytest.raises(LeukoscopeError, match="manifest not found"):
        resize_manifest(tmp_path / "missing.csv", tmp_path / "copy", size=32)


def test_labels_must_be_classes(dataset: Path, tmp_path: Path) -> None:
    """A label becomes a folder name: ``../`` in one would write outside ``--out``."""
    text = dataset.read_text()
    first = text.splitlines()[1].split(",")[1]
    dataset.write_text(text.replace(f",{first},", ",../../escaped,", 1))
    out = tmp_path / "nested" / "copy"
    with pytest.raises(LeukoscopeError, match=r"'\.\./\.\./escaped' are not cell classes"):
        resize_manifest(dataset, out, size=32, fmt="png", workers=0)
    assert not (tmp_path / "escaped").exists() and not out.exists()
