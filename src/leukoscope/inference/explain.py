"""Grad-CAM explanations: which part of the image drove a prediction.

Uses the ``grad-cam`` library on the last stage of the backbone (its most semantic feature map
that still has spatial extent). A heatmap on the background instead of the cell is a reason to
distrust a prediction, and the most confident mistakes with their heatmaps show what the model
has learnt wrong. Grad-CAM hooks the PyTorch model, so do not run it concurrently with other
uses of the same predictor's torch model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from leukoscope.data.preprocess import to_pixels
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_open
from leukoscope.inference.predictor import Predictor


def gradcam(
    predictor: Predictor, image: Image.Image, target: str | None = None
) -> tuple[np.ndarray, str]:
    """Grad-CAM heatmap (H, W) in [0, 1] at the image's size, for ``target`` (default: the
    predicted class); returns it with the class explained."""
    pixels = torch.from_numpy(to_pixels(image, predictor.card.preprocessing)[None].copy())
    x = predictor.pixel_model.normalise(pixels)
    model = predictor.model
    if target is None:
        with torch.no_grad():
            index = int(model(x).argmax(dim=1))
    elif target in predictor.classes:
        index = predictor.classes.index(target)
    else:
        raise LeukoscopeError(
            f"unknown class {target!r}: the model has {', '.join(predictor.classes)}"
        )
    # The backbone module returns the final feature map for every arch (its last stage may be
    # a container that forward never calls, as for EfficientNet).
    with GradCAM(model=model, target_layers=[model.backbone]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]
    resized = Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0), predictor.classes[index]


def gradcam_overlay(
    predictor: Predictor, image: Image.Image, target: str | None = None
) -> Image.Image:
    """The image with its Grad-CAM heatmap (jet colour map) blended over it, half and half."""
    heat, _ = gradcam(predictor, image, target)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.5))


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically."""
    with atomic_open(path) as handle:
        image.save(handle, format="PNG")
    return Path(path)
