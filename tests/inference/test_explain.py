import numpy as np
import pytest
import torch

from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.explain import gradcam, gradcam_overlay
from leukoscope.inference.predictor import Predictor
from leukoscope.models import ModelCard, create_model
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


@pytest.mark.parametrize("arch", ["squeezenet1_1", "efficientnet_lite0", "resnet50"])
def test_gradcam_works_for_every_backbone(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 3, weights="none").eval()
    preprocessing = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    card = ModelCard(arch, ("a", "b", "c"), model.head_config, preprocessing)
    heat, explained = gradcam(Predictor.from_model(model, card), cell_image(3, size=80))
    assert heat.shape == (80, 80) and explained in card.classes
    assert np.isfinite(heat).all() and heat.max() > 0
