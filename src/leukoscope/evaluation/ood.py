"""How often inputs a model does not know are flagged for review (``leukoscope ood-check``).

The abstention rule (:mod:`leukoscope.inference.abstention`) is fitted on cells of the model's
own classes; this harness checks it on what it must also catch: synthetic inputs no cell
classifier should trust, and real cells of PBC classes the model has no class for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from leukoscope.classes import PBC8
from leukoscope.data.datasets import evenly_spaced, samples_from_folder
from leukoscope.data.images import decode_rgb
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.predictor import Predictor


def synthetic_ood_images(
    n: int = 20, size: int = 360, seed: int = 0
) -> dict[str, list[Image.Image]]:
    """Inputs no cell classifier should trust: Gaussian noise, blank fields, natural photos.

    Photos are random crops of scikit-image's bundled samples (chelsea, astronaut, coffee); the
    kind is left out when scikit-image is not installed.
    """
    rng = np.random.default_rng(seed)

    def field(mean: np.ndarray | float, sd: float) -> Image.Image:
        pixels = rng.normal(mean, sd, (size, size, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    kinds = {
        "noise": [field(rng.uniform(60, 200), rng.uniform(20, 80)) for _ in range(n)],
        "blank": [field(rng.uniform(0, 255, 3), 3.0) for _ in range(n)],
    }
    try:
        from skimage import data
    except ImportError:
        return kinds
    photos = [data.chelsea(), data.astronaut(), data.coffee()]
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crops.append(Image.fromarray(photo[top : top + side, left : left + side]))
    kinds["photo"] = crops
    return kinds


def unknown_class_images(
    data_dir: str | Path, model_classes: Sequence[str], n: int = 50
) -> dict[str, list[Image.Image]]:
    """Up to ``n`` images (evenly spread) of each PBC class the model has no class for."""
    kinds: dict[str, list[Image.Image]] = {}
    for label in (c for c in PBC8 if c not in model_classes):
        try:
            samples, _ = samples_from_folder(data_dir, classes=[label])
        except LeukoscopeError:
            continue
        kinds[label] = [decode_rgb(s.path) for s in evenly_spaced(samples, n)]
    return kinds


def ood_catch_rates(
    predictor: Predictor, kinds: Mapping[str, Sequence[Image.Image]]
) -> dict[str, dict[str, float | int]]:
    """For each kind of input, how many the predictor flags ``uncertain``."""
    rates: dict[str, dict[str, float | int]] = {}
    for kind, images in kinds.items():
        predictions = predictor.predict_images(images, [f"{kind}-{i}" for i in range(len(images))])
        if not predictions:
            continue
        caught = sum(p.uncertain for p in predictions)
        rates[kind] = {
            "n": len(predictions),
            "caught": caught,
            "rate": round(caught / len(predictions), 4),
            "median_score": round(float(np.median([p.score for p in predictions])), 4),
        }
    return rates
