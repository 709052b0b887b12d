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

The external sets measure; they never train a released model.

Run: .venv/bin/python benchmarks/samples.py [--models models/a models/b ...]
       [--external ../shared/data/external] [--manifests runs/manifests]
       [--out benchmarks/results/samples.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from external import add_model_options, models_or_released, released_manifest
from results_file import write_results

from leukoscope.cli.console import classify_inputs
from leukoscope.data.datasets import Sample, read_manifest, samples_from_folder
from leukoscope.inference.predictor import Predictor


def scored(predictor: Predictor, samples: list[Sample], renormalise: bool) -> dict[str, Any]:
    """``samples`` classified as one sample by ``predictor`` as ``predict`` does it, scored
    against their labels (class indices of the predictor's classes)."""
    start = time.perf_counter()
    result = classify_inputs(
        predictor, [s.path for s in samples], 64, 2, fields=False, renormalise=renormalise
    )
    seconds = time.perf_counter() - start
    truth = {str(s.path): predictor.classes[s.label] for s in samples}
    calls = [(p.label == truth[p.source], p.uncertain) for p in result.predictions if p.label]
    kept = [right for right, uncertain in calls if not uncertain]
    return {
        "n_images": len(samples),
        "accuracy": round(sum(right for right, _ in calls) / len(samples), 4),
        "uncertain_share": round(1 - len(kept) / len(samples), 4),
        "accuracy_kept": round(sum(kept) / len(kept), 4) if kept else None,
        "shifted": None if result.shift is None else result.shift.shifted,
        "renormalised_cells": result.renormalised,
        "magnification": None if result.magnification is None else result.magnification.factor,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/samples.json"))
    args = parser.parse_args()
    models = models_or_released(args.models)
    results: dict[str, Any] = {}
    for model in models:
        predictor = Predictor.load(model)
        sets: dict[str, list[Sample] | str] = {
            folder.parent.name: samples_from_folder(folder, predictor.classes)[0]
            for folder in sorted(args.external.glob("*/images"))
        }
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
                "renormalised_if_shifted": scored(predictor, samples, renormalise=True),
                "as_trained": scored(predictor, samples, renormalise=False),
            }
            print(model, name, row[name], flush=True)
        results[str(model)] = row
        write_results(args.out, "samples", results=results)


if __name__ == "__main__":
    main()
