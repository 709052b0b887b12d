"""How many class-aware refinements a sample's magnification factor needs (``SampleScale``).

For each sample, the factor :meth:`Predictor.estimate_scale` measures with 0, 1 and 2
refinements, and the accuracy of the sample rescaled by it (within the card's tolerance, the
images as they are). The samples: PBC test cells of one class at a time (at most ``--per-class``
of each; a sample of one class is where the plain median of cell sizes misreads the
magnification), and each labelled set under ``--external`` (other labs' images, one sample).

Run: .venv/bin/python benchmarks/scale.py [--model models/wbc5-squeezenet1_1]
       [--manifest runs/manifests/wbc5-seed0.csv] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results

import leukoscope.data.preprocess as preprocess
from leukoscope.data.datasets import read_manifest, samples_from_folder
from leukoscope.inference.predictor import Predictor

REFINEMENTS = (0, 1, 2)


def score(predictor: Predictor, paths: Sequence[Path], labels: Sequence[str]) -> dict[str, Any]:
    """Factor and accuracy of one sample for each number of refinements."""
    row: dict[str, Any] = {"n_images": len(paths)}
    default = preprocess.SCALE_REFINEMENTS
    try:
        for refinements in REFINEMENTS:
            preprocess.SCALE_REFINEMENTS = refinements
            scale = predictor.estimate_scale(paths)
            predictions = predictor.predict_paths(paths, scale=scale)
            right = np.mean([p.label == y for p, y in zip(predictions, labels, strict=True)])
            row[f"refinements_{refinements}"] = {
                "measured": None if scale.measured is None else round(scale.measured, 3),
                "factor": round(scale.factor, 3),
                "accuracy": round(float(right), 4),
            }
    finally:
        preprocess.SCALE_REFINEMENTS = default
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/wbc5-squeezenet1_1"))
    parser.add_argument("--manifest", type=Path, default=Path("runs/manifests/wbc5-seed0.csv"))
    parser.add_argument("--external", type=Path, default=Path("../shared/data/external"))
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    classes = predictor.classes
    results: dict[str, Any] = {}
    test, _ = read_manifest(args.manifest, "test", classes)
    for index, name in enumerate(classes):
        cells = [s.path for s in test if s.label == index][: args.per_class]
        results[f"pbc-test-{name}"] = score(predictor, cells, [name] * len(cells))
        print(name, results[f"pbc-test-{name}"], flush=True)
    for images in sorted(args.external.glob("*/images")):
        samples, _ = samples_from_folder(images, classes)
        truth = [classes[s.label] for s in samples]
        results[images.parent.name] = score(predictor, [s.path for s in samples], truth)
        print(images.parent.name, results[images.parent.name], flush=True)
    write_results(
        args.out,
        "scale",
        model=str(args.model),
        model_sha256=predictor.card.sha256,
        scale_cells=preprocess.SCALE_CELLS,
        results=results,
    )


if __name__ == "__main__":
    main()
