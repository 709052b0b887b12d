"""Grad-CAM explanations: which part of the image drove a prediction.

Uses the ``grad-cam`` library on the last stage of the backbone (its most semantic feature map
that still has spatial extent). A heatmap on the background instead of the cell is a reason to
distrust a prediction, and the most confident mistakes with their heatmaps show what the model
has learnt wrong. Grad-CAM hooks the PyTorch model, so do not run it concurrently with other
uses of the same predictor's torch model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError, LeukoscopeError
from leukoscope.fileio import atomic_open
from leukoscope.inference.predictor import Prediction, Predictor, to_pixels
from leukoscope.reports.figures import save_figure

MISTAKES_GRID = "most_confident_mistakes.png"


def gradcam(
    predictor: Predictor, image: Image.Image, target: str | None = None
) -> tuple[np.ndarray, str]:
    """Grad-CAM heatmap (H, W) in [0, 1] at the image's size, for ``target`` (default: the
    predicted class); returns it with the class explained."""
    pixels = torch.from_numpy(to_pixels(image, predictor.input_size)[None].copy())
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


def confident_mistakes(
    predictions: Sequence[Prediction],
    true_labels: Sequence[str],
    paths: Sequence[str | Path],
    n: int = 12,
) -> list[dict[str, Any]]:
    """The ``n`` wrong predictions made with the highest confidence, most confident first."""
    if not len(predictions) == len(paths) == len(true_labels):
        raise ValueError("paths, true_labels and predictions must have the same length")
    mistakes = sorted(
        (
            (p, truth, path)
            for p, truth, path in zip(predictions, true_labels, paths, strict=True)
            if p.error is None and p.label != truth
        ),
        key=lambda item: -item[0].confidence,
    )[:n]
    return [
        {
            "source": str(path),
            "true": truth,
            "predicted": prediction.label,
            "confidence": round(prediction.confidence, 4),
        }
        for prediction, truth, path in mistakes
    ]


def mistake_heatmaps(
    predictor: Predictor, mistakes: Sequence[dict[str, Any]], out_dir: str | Path
) -> Path | None:
    """Grad-CAM overlays of :func:`confident_mistakes` entries for the predicted class: one
    ``mistake_NN.png`` each (its name set as the entry's ``overlay``) and a captioned grid,
    ``most_confident_mistakes.png``, whose path is returned (None if nothing was drawn)."""
    out = Path(out_dir)
    drawn: list[dict[str, Any]] = []
    overlays = []
    for rank, entry in enumerate(mistakes, start=1):
        try:
            image = decode_rgb(entry["source"])
        except ImageDecodeError:
            continue
        overlay = gradcam_overlay(predictor, image, entry["predicted"])
        entry["overlay"] = save_png(overlay, out / f"mistake_{rank:02d}.png").name
        overlays.append(overlay)
        drawn.append(entry)
    if not drawn:
        return None
    return _grid(overlays, drawn, out / MISTAKES_GRID)


def _grid(images: Sequence[Image.Image], entries: Sequence[dict[str, object]], path: Path) -> Path:
    """A grid of images captioned 'true -> predicted (confidence)'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, entry in zip(axes.flat, images, entries, strict=False):
        ax.imshow(image)
        ax.set_title(
            f"{entry['true']} -> {entry['predicted']} ({entry['confidence']:.2f})", fontsize=9
        )
    return save_figure(fig, path)
