"""Small models on synthetic cells, shared by the inference and CLI tests.

:func:`build_tiny`: a head trained on ImageNet SqueezeNet features at 64 px learns the synthetic
classes (told apart by nucleus colour) in seconds, so its predictions, calibration and abstention
behave like a real model's. :func:`build_untrained`: random weights, for plumbing tests only.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import Preprocessing, to_pixels
from leukoscope.evaluation.calibrate import calibrate
from leukoscope.inference.pixel_model import PixelModel
from leukoscope.models import HeadConfig, ModelCard, create_model, save_model, update_card
from leukoscope.models.card import Calibration, set_fallback
from leukoscope.models.weights import SQUEEZENET_H5_NAMES, squeezenet_h5_dirs
from tests.conftest import cell_image

HUES = {
    "basophil": (70, 40, 130),
    "eosinophil": (200, 90, 60),
    "lymphocyte": (60, 110, 190),
    "neutrophil": (150, 80, 150),
}
CLASSES = tuple(HUES)
SIZE = 64
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PER_SPLIT = {"train": 24, "val": 20, "test": 8}


@dataclass(frozen=True)
class Tiny:
    model_dir: Path
    manifest: Path

    def split(self, name: str) -> list[tuple[Path, str]]:
        """(image path, label) of one split of the manifest."""
        with self.manifest.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == name]
        return [(self.manifest.parent / r["path"], r["label"]) for r in rows]


def squeezenet_h5() -> Path | None:
    """The keras-squeezenet ImageNet weights where the library looks for them, if present."""
    for folder in squeezenet_h5_dirs():
        for name in SQUEEZENET_H5_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


PREPROCESSING = Preprocessing(SIZE, MEAN, STD)


def _card() -> ModelCard:
    return ModelCard("squeezenet1_1", CLASSES, HeadConfig(0, 0.0), PREPROCESSING)


def build_untrained(model_dir: Path) -> Path:
    """A randomly initialised model saved in ``model_dir``."""
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", len(CLASSES), weights="none", head=HeadConfig(0, 0.0))
    save_model(model_dir, model.eval(), _card())
    return model_dir


def write_images(root: Path) -> list[dict[str, str]]:
    """Synthetic cells of every class and split under ``root/images``, and their manifest."""
    rows = []
    for k, (label, hue) in enumerate(HUES.items()):
        seed = 1000 * k
        for split, count in PER_SPLIT.items():
            for i in range(count):
                path = root / "images" / label / f"{split}_{i:02d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cell_image(seed, size=96, hue=hue).save(path, quality=92)
                seed += 1
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                relative = str(path.relative_to(root))
                rows.append({"path": relative, "label": label, "split": split, "sha256": sha})
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def build_tiny(root: Path, weights_file: Path) -> Tiny:
    """Images, manifest and a trained, calibrated model under ``root`` (reused when present)."""
    tiny = Tiny(root / "model", root / "manifest.csv")
    if (tiny.model_dir / "abstention.safetensors").exists():
        return tiny
    rows = write_images(root)
    torch.manual_seed(0)
    model = create_model(
        "squeezenet1_1", len(CLASSES), weights_file=weights_file, head=HeadConfig(0, 0.0)
    ).eval()
    train = [r for r in rows if r["split"] == "train"]
    pixels = np.stack([to_pixels(decode_rgb(root / r["path"]), PREPROCESSING) for r in train])
    with torch.no_grad():  # the backbone stays frozen: only the head learns
        features = PixelModel(model, MEAN, STD)(torch.from_numpy(pixels))[1]
    labels = torch.tensor([CLASSES.index(r["label"]) for r in train])
    optimiser = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(200):
        loss = F.cross_entropy(model.head.classifier(features), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    save_model(tiny.model_dir, model, _card())
    calibrate(tiny.model_dir, tiny.manifest, workers=0, out_dir=root / "calibration")
    return tiny


def save_batchnorm_model(model_dir: Path) -> Path:
    """An untrained EfficientNet-Lite0 (which has BatchNorm layers) saved at 32 px."""
    torch.manual_seed(0)
    head = HeadConfig(0, 0.0)
    model = create_model("efficientnet_lite0", len(HUES), weights="none", head=head)
    card = ModelCard("efficientnet_lite0", tuple(HUES), head, Preprocessing(32, MEAN, STD))
    return save_model(model_dir, model.eval(), card)


def build_batchnorm(root: Path) -> Tiny:
    """:func:`save_batchnorm_model` calibrated on :func:`write_images`' manifest under ``root``
    (reused when present): plumbing for the models that can be renormalised."""
    tiny = Tiny(root / "model", root / "manifest.csv")
    if (tiny.model_dir / "abstention.safetensors").exists():
        return tiny
    write_images(root)
    save_batchnorm_model(tiny.model_dir)
    calibrate(tiny.model_dir, tiny.manifest, workers=0, out_dir=root / "calibration")
    return tiny


def tiny_or_skip(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The session's tiny model (built once, under the session's base temporary folder), or a
    skipped test when the ImageNet SqueezeNet weights are absent."""
    weights = squeezenet_h5()
    if weights is None:
        pytest.skip("keras-squeezenet ImageNet weights not found (set LEUKOSCOPE_WEIGHTS_DIR)")
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny", weights)


def build_cascade(root: Path, tiny: Tiny, untrained: Path) -> Path:
    """The fast model of a cascade under ``root``: a copy of the tiny model that flags two of
    its 32 test cells uncertain (about the 5% its abstention rule expects, so that a sample of
    them does not look shifted), backed by a calibrated copy of the untrained model (whose
    calls differ) as its fallback at ``root / "slow"``."""
    from leukoscope.inference.predictor import Predictor

    fast = Path(shutil.copytree(tiny.model_dir, root / "fast"))
    slow = Path(shutil.copytree(untrained, root / "slow"))
    update_card(slow, calibration=Calibration(1.0, 0.0, 0.0, 1, "val"))
    alone = Predictor.load(fast)
    assert alone.card.abstention is not None
    scores = [p.score for p in alone.predict_paths([path for path, _ in tiny.split("test")])]
    threshold = sorted(scores)[2]
    update_card(fast, abstention=dataclasses.replace(alone.card.abstention, threshold=threshold))
    set_fallback(fast, slow)
    return fast
