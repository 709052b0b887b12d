"""Fixtures for the trainer tests: synthetic 'cell' images of three classes and a manifest."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from leukoscope.training.trainer import TrainConfig

CLASSES = ("eosinophil", "lymphocyte", "neutrophil")
"""Synthetic stand-ins: red discs, green squares and blue triangles."""


def shape_image(label: int, seed: int, size: int = 48) -> Image.Image:
    """A noisy, randomly placed coloured shape whose form and colour encode ``label``."""
    rng = np.random.default_rng([label, seed])
    image = Image.new("RGB", (size, size), (230, 215, 220))
    draw = ImageDraw.Draw(image)
    x, y = rng.integers(size // 4, 3 * size // 4, 2)
    r = int(rng.integers(size // 6, size // 4))
    colour = [(170, 40, 60), (60, 150, 70), (60, 70, 170)][label]
    if label == 0:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif label == 1:
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    noise = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def tiny_train_args(manifest: Path, out: Path) -> list[str]:
    """``leukoscope train`` arguments for one epoch of a random-init SqueezeNet at 48 px."""
    return [
        "train",
        "--manifest",
        str(manifest),
        "--arch",
        "squeezenet1_1",
        "--weights",
        "none",
        "--image-size",
        "48",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]


def write_dataset(root: Path, per_class: int, folder_names: dict[str, str] | None = None) -> Path:
    """Write images under ``root/images/<class folder>`` and ``root/manifest.csv`` (half train,
    a quarter each val and test); returns the manifest path."""
    rows = []
    for label, name in enumerate(CLASSES):
        folder = (folder_names or {}).get(name, name)
        for i in range(per_class):
            path = root / "images" / folder / f"{name}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            shape_image(label, i).save(path)
            split = "train" if i < per_class // 2 else "val" if i < 3 * per_class // 4 else "test"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rows.append((path.relative_to(root).as_posix(), name, split, digest))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "split", "sha256"))
        writer.writerows(rows)
    return manifest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Image caches and converted weights go to a per-session temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "leukoscope-cache"
    monkeypatch.setenv("LEUKOSCOPE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images per class: 8 train, 4 val, 4 test."""
    return write_dataset(tmp_path_factory.mktemp("synthetic"), per_class=16)


def train_config(manifest: Path, out: Path, **overrides: object) -> TrainConfig:
    """A quick training of a random-init SqueezeNet at 48 px (3 fine-tuning epochs), with
    ``overrides`` of any :class:`TrainConfig` field."""
    settings: dict[str, object] = {
        "manifest": manifest,
        "arch": "squeezenet1_1",
        "out": out,
        "weights": "none",
        "image_size": 48,
        "epochs": 3,
    }
    return TrainConfig(**(settings | overrides))  # type: ignore[arg-type]
