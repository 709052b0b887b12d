"""The most confident mistakes of an evaluation, with Grad-CAM heatmaps of what misled them.

A model's confident mistakes show what it has learnt wrong (a heatmap on the background, a
mislabelled image); they are report material, drawn with the runtime's
:func:`~leukoscope.inference.explain.gradcam_overlay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError
from leukoscope.inference.explain import gradcam_overlay, save_png
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.reports.figures import save_figure

MISTAKES_GRID = "most_confident_mistakes.png"


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
