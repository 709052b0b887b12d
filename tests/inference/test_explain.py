from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.errors import LeukoscopeError
from leukoscope.inference.explain import (
    MISTAKES_GRID,
    confident_mistakes,
    gradcam,
    gradcam_overlay,
    mistake_heatmaps,
)
from leukoscope.inference.predictor import Predictor
from leukoscope.models import create_model
from tests.conftest import cell_image
from tests.inference.tiny import Tiny


def test_gradcam_heatmap_is_at_image_size_in_unit_range(tiny: Tiny) -> None:
    predictor = Predictor.load(tiny.model_dir)
    image = cell_image(7, size=120)
    heat, explained = gradcam(predictor, image)
    assert heat.shape == (120, 120)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0
    assert explained == predictor.predict_images([image], ["x"])[0].label
    assert gradcam(predictor, image, target="eosinophil")[1] == "eosinophil"
    with pytest.raises(LeukoscopeError):
        gradcam(predictor, image, target="platelet")


def test_overlay_keeps_the_image_size(tiny: Tiny) -> None:
    overlay = gradcam_overlay(Predictor.load(tiny.model_dir), cell_image(8, size=100))
    assert overlay.size == (100, 100) and overlay.mode == "RGB"


def test_most_confident_mistakes_come_first(tmp_path: Path, tiny: Tiny) -> None:
    predictor = Predictor.load(tiny.model_dir)
    paths = [p for p, _ in tiny.split("test")][:6]
    predictions = predictor.predict_paths(paths, workers=0)
    wrong = ["neutrophil" if p.label != "neutrophil" else "basophil" for p in predictions]
    entries = confident_mistakes(predictions, wrong, paths, n=3)
    confidences = [e["confidence"] for e in entries]
    assert len(entries) == 3 and confidences == sorted(confidences, reverse=True)
    assert max(confidences) == pytest.approx(max(p.confidence for p in predictions), abs=1e-4)
    grid = mistake_heatmaps(predictor, entries, tmp_path)
    assert grid == tmp_path / MISTAKES_GRID and grid.stat().st_size > 0
    first = Image.open(tmp_path / entries[0]["overlay"])
    assert first.size == Image.open(entries[0]["source"]).size
    assert np.all([(tmp_path / e["overlay"]).exists() for e in entries])
    right = [p.label for p in predictions]
    assert confident_mistakes(predictions, right, paths) == []
    assert mistake_heatmaps(predictor, [], tmp_path / "none") is None


@pytest.mark.parametrize("arch", ["squeezenet1_1", "efficientnet_lite0", "resnet50"])
def test_gradcam_works_for_every_backbone(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 3, weights="none").eval()
    card = {"classes": ["a", "b", "c"], "input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    heat, explained = gradcam(Predictor.from_model(model, card), cell_image(3, size=80))
    assert heat.shape == (80, 80) and explained in card["classes"]
    assert np.isfinite(heat).all() and heat.max() > 0
