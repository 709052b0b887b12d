"""Labelled sets classified as one sample each, the way ``predict`` and ``differential`` do it.

``benchmarks/external.py`` scores a model as it is (or always renormalised). A user's
``predict`` does more: it rescales the sample to the training magnification, checks whether the
sample as a whole looks unlike the training data, and if so classifies it again with the model
renormalised on it (``--renormalise``, the default; :func:`leukoscope.training.adapt.
renormalised_for_sample`). This runs that very path (``leukoscope.cli.console.classify_inputs``)
on every labelled set under ``--external`` (each folder's ``images/``) and on each model's own
PBC test split (when its manifest is at ``--manifests``), with ``--renormalise`` and without,
and scores the calls against the folders' labels: accuracy, share flagged uncertain, accuracy of
the cells kept, whether the sample was called shifted, the cells renormalised on, and seconds.

With ``--fields`` each image is taken as a field image instead (``predict --fields``: its
white cells located, cut out at the training magnification and classified, and a shifted
sample renormalised on those cells), on the external sets only (locating every PBC test image
as a field would take most of an hour). An image counts as right when the cell found nearest
its centre gets its folder's class; an image with no cell found counts as wrong.

The external sets measure; they never train a released model.

Run: .venv/bin/python benchmarks/samples.py [--models models/a models/b ...]
       [--external ../shared/data/external] [--manifests runs/manifests] [--fields]
       [--out benchmarks/results/samples.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from external import add_model_options, models_or_released, released_manifest, samples_in
from PIL import Image
from results_file import write_results

from leukoscope.cli.console import Classified, classify_inputs
from leukoscope.data.datasets import Sample, read_manifest
from leukoscope.inference.predictor import Prediction, Predictor


def scored(
    predictor: Predictor, samples: list[Sample], renormalise: bool, fields: bool = False
) -> dict[str, Any]:
    """``samples`` classified as one sample by ``predictor`` as ``predict`` does it (with
    ``fields``, as ``predict --fields``), scored against their labels (class indices of the
    predictor's classes)."""
    start = time.perf_counter()
    result = classify_inputs(
        predictor, [s.path for s in samples], 64, 2, fields=fields, renormalise=renormalise
    )
    seconds = time.perf_counter() - start
    truth = {str(s.path): predictor.classes[s.label] for s in samples}
    found = central_calls(result) if fields else result.predictions
    calls = [(p.label == truth[p.source], p.uncertain) for p in found if p.label]
    kept = [right for right, uncertain in calls if not uncertain]
    scores = {
        "n_images": len(samples),
        "accuracy": round(sum(right for right, _ in calls) / len(samples), 4),
        "uncertain_share": round(1 - len(kept) / len(samples), 4),
        "accuracy_kept": round(sum(kept) / len(kept), 4) if kept else None,
        "shifted": None if result.shift is None else result.shift.shifted,
        "renormalised_cells": result.renormalised,
        "magnification": None if result.magnification is None else result.magnification.factor,
        "seconds": round(seconds, 1),
    }
    if fields:
        scores["images_without_cells"] = result.fields_without_cells
    return scores


def central_calls(result: Classified) -> list[Prediction]:
    """Of each field image's cells, the one whose box centre is nearest the image's centre."""
    best: dict[str, tuple[float, Prediction]] = {}
    for prediction, box in zip(result.predictions, result.boxes or [], strict=True):
        if box is None:  # an unreadable image
            continue
        with Image.open(prediction.source) as image:
            width, height = image.size
        distance = float(
            np.hypot((box.x_min + box.x_max - width) / 2, (box.y_min + box.y_max - height) / 2)
        )
        if prediction.source not in best or distance < best[prediction.source][0]:
            best[prediction.source] = (distance, prediction)
    return [prediction for _, prediction in best.values()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_model_options(parser)
    parser.add_argument("--fields", action="store_true", help="each image as a field image")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/samples.json"))
    args = parser.parse_args()
    models = models_or_released(args.models)
    results: dict[str, Any] = {}
    for model in models:
        predictor = Predictor.load(model)
        sets: dict[str, list[Sample] | str] = {
            folder.parent.name: samples_in(folder, predictor.classes)
            for folder in sorted(args.external.glob("*/images"))
        }
        if args.fields:
            sets["pbc_test"] = "not run as fields (see the docstring)"
        else:
            manifest = released_manifest(predictor.card, args.manifests, model)
            sets["pbc_test"] = (
                manifest
                if isinstance(manifest, str)
                else read_manifest(manifest, "test", predictor.classes)[0]
            )
        row: dict[str, Any] = {}
        for name, samples in sets.items():
            if isinstance(samples, str):
                row[name] = {"skipped": samples}
                continue
            row[name] = {
                "renormalised_if_shifted": scored(predictor, samples, True, args.fields),
                "as_trained": scored(predictor, samples, False, args.fields),
            }
            print(model, name, row[name], flush=True)
        results[str(model)] = row
        write_results(args.out, "samples", fields=args.fields, results=results)


if __name__ == "__main__":
    main()
