from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from leukoscope.data.datasets import (
    UNLABELLED,
    make_loader,
    read_manifest,
    samples_from_folder,
    samples_from_paths,
)
from leukoscope.data.preprocess import Preprocessing, pixels_dataset
from leukoscope.data.split import split_folder, write_manifest
from leukoscope.errors import LeukoscopeError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_loader_skips_and_reports_bad_images(messy_dataset: Path) -> None:
    samples, classes = samples_from_folder(messy_dataset)
    assert classes == ("basophil", "eosinophil", "lymphocyte", "neutrophil")
    dataset = pixels_dataset(samples, Preprocessing(32, MEAN, STD))
    seen, errors = 0, []
    for batch in make_loader(dataset, batch_size=8, workers=2):
        assert batch.images.shape[1:] == (32, 32, 3)
        assert batch.images.dtype == torch.uint8
        seen += len(batch.labels)
        errors += batch.errors
    messages = " | ".join(message for _, message in errors)
    assert seen + len(errors) == len(samples)
    for name, problem in [
        ("empty.jpg", "empty file"),
        ("readme.jpg", "not an image"),
        ("cut.jpg", "truncated"),
        ("bomb.png", "image too large"),
    ]:
        assert f"{name}: {problem}" in messages
    assert ".DS_Store" not in messages  # hidden files are never samples


def test_manifest_round_trip(messy_dataset: Path, tmp_path: Path) -> None:
    classes = ("basophil", "eosinophil", "lymphocyte", "neutrophil")
    result = split_folder(messy_dataset, classes, seed=0, val=0.2, test=0.2, workers=1)
    write_manifest(result, messy_dataset, tmp_path / "m.csv")
    train, labels = read_manifest(tmp_path / "m.csv", "train")
    test, labels_test = read_manifest(tmp_path / "m.csv", "test")
    assert labels == labels_test == classes
    assert all(s.path.is_file() for s in train + test)
    assert {s.path for s in train}.isdisjoint({s.path for s in test})
    subset, sub_labels = read_manifest(
        tmp_path / "m.csv", "train", classes=("neutrophil", "basophil")
    )
    assert sub_labels == ("neutrophil", "basophil")
    assert {s.label for s in subset} == {0, 1}


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(LeukoscopeError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(LeukoscopeError, match="not a leukoscope manifest"):
        read_manifest(bad)
    with pytest.raises(LeukoscopeError, match="unknown split"):
        read_manifest(bad, "holdout")


def test_folder_with_class_subset(messy_dataset: Path) -> None:
    samples, classes = samples_from_folder(messy_dataset, ("eosinophil", "monocyte", "neutrophil"))
    assert classes == ("eosinophil", "monocyte", "neutrophil")
    assert {s.label for s in samples} == {0, 2}


def test_samples_from_paths(messy_dataset: Path, make_image: Callable[..., Path]) -> None:
    found = samples_from_paths(
        [messy_dataset / "LY", str(messy_dataset / "Basophil" / "Ba_00*.jpg")]
    )
    assert all(s.label == UNLABELLED for s in found)
    assert any(s.path.name == "Ba_001.jpg" for s in found)
    with pytest.raises(LeukoscopeError, match="no such file"):
        samples_from_paths([messy_dataset / "nothing.jpg"])


def test_real_sample_loads(pbc_sample: Path) -> None:
    samples, classes = samples_from_folder(pbc_sample)
    assert len(classes) == 8
    batch = next(
        iter(
            make_loader(
                pixels_dataset(samples, Preprocessing(64, MEAN, STD)), batch_size=48, workers=0
            )
        )
    )
    assert batch.images.shape == (48, 64, 64, 3) and not batch.errors
