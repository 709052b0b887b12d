"""Test-time views: how accuracy on one split changes with 1, 4 or 8 views per image.

Each image of ``--split`` (validation by default: the choice of views is made there, never on
test) is classified in its eight symmetric views (quarter turns, and the same mirrored) by an
ONNX export of the single-view model; the logits of views 0, 0-3 and 0-7 are averaged exactly
as the model does with ``test_time_views`` 1, 4 and 8.

For a model with test-time views and a calibration, it also scores the choice of
``calibrate --extra-views-below``: for each threshold of :data:`EXTRA_VIEWS_BELOW`, the images
whose first view's calibrated confidence (the card's temperature) is under it take the average
of all the card's views and the others their first view's call; recorded are the share of
images that needed the other views, the model passes per image, the accuracy, and how many
calls differ from every view's average.

Run: python benchmarks/views.py --model models/pbc8-efficientnet_lite0
     --manifest runs/manifests/pbc8-seed0.csv [--split val] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results
from sklearn.metrics import accuracy_score, f1_score

from leukoscope.data.datasets import make_loader, read_manifest
from leukoscope.fileio import sha256_file
from leukoscope.inference.export import export_fp32
from leukoscope.inference.pixel_model import symmetric_views
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import VIEW_COUNTS, unsure_of_first_view
from leukoscope.models import ModelCard, load_card, update_card
from leukoscope.models.card import CARD_NAME


def view_logits(model: Path, manifest: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, 8 views, C) of the split's readable images, and their labels."""
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / model.name
        shutil.copytree(model, single)
        update_card(single, test_time_views=1, extra_views_below=None)
        export_fp32(single, single / "model.onnx")
        predictor = Predictor.load(single, backend="onnx")
        samples, _ = read_manifest(manifest, split, predictor.classes)
        logits, labels = [], []
        for batch in make_loader(predictor.dataset(samples), batch_size=32):
            if len(batch.indices):
                # the model's own views, in its order, on NHWC pixels
                turned = symmetric_views(batch.images, 8, dims=(1, 2))
                views = [predictor.run(v.contiguous().numpy())[0] for v in turned]
                logits.append(np.stack(views, axis=1))
                labels.append(batch.labels.numpy())
    return np.concatenate(logits), np.concatenate(labels)


EXTRA_VIEWS_BELOW = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def extra_views(logits: np.ndarray, labels: np.ndarray, card: ModelCard) -> dict[str, Any]:
    """The ``--extra-views-below`` choices scored on ``logits`` (N, 8 views, C) (see above)."""
    assert card.calibration is not None
    views = card.test_time_views
    every = logits[:, :views].mean(axis=1).argmax(axis=1)
    first = logits[:, 0]
    rows = {}
    for below in EXTRA_VIEWS_BELOW:
        unsure = unsure_of_first_view(first, card.calibration.temperature, below)
        predicted = np.where(unsure, every, first.argmax(axis=1))
        rows[str(below)] = {
            "share_with_other_views": round(float(unsure.mean()), 4),
            "passes_per_image": round(1 + (views - 1) * float(unsure.mean()), 3),
            "accuracy": round(float(accuracy_score(labels, predicted)), 4),
            "errors": int((predicted != labels).sum()),
            "calls_unlike_every_view": int((predicted != every).sum()),
        }
        print(f"extra views below {below}: {rows[str(below)]}", flush=True)
    return {"views": views, "temperature": card.calibration.temperature, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/views-MODEL.json")
    args = parser.parse_args()

    logits, labels = view_logits(args.model, args.manifest, args.split)
    results = {}
    for views in VIEW_COUNTS:
        predicted = logits[:, :views].mean(axis=1).argmax(axis=1)
        results[str(views)] = {
            "accuracy": round(float(accuracy_score(labels, predicted)), 4),
            "macro_f1": round(float(f1_score(labels, predicted, average="macro")), 4),
            "errors": int((predicted != labels).sum()),
        }
        print(f"{views} view(s): {results[str(views)]}", flush=True)
    card = load_card(args.model / CARD_NAME)
    extra = None
    if card.test_time_views > 1 and card.calibration is not None:
        extra = extra_views(logits, labels, card)
    out = args.out or Path(f"benchmarks/results/views-{args.model.name}.json")
    write_results(
        out,
        "test-time views",
        model=str(args.model),
        manifest=str(args.manifest),
        manifest_sha256=sha256_file(args.manifest),
        split=args.split,
        n_images=len(labels),
        each_view_alone_accuracy=[
            round(float((logits[:, v].argmax(axis=1) == labels).mean()), 4) for v in range(8)
        ],
        results=results,
        extra_views_below=extra,
    )


if __name__ == "__main__":
    main()
