"""How many cells a sample's magnification estimate needs (``SCALE_CELLS``).

Every ``predict`` of eight or more files measures the sample's magnification on
``SCALE_CELLS`` of them before its first batch: with 64, as until this benchmark chose 32, about
a second on two cores, a fifth of a 1,227-file run of the fast SqueezeNet
(``benchmarks/inference.py``, ``scale_estimate_s``).
Fewer cells would cost less but read the factor less surely. For random samples of ``--size``
cells (``--samples`` of them, seeds 0, 1, ...) from each source:

- PBC's test split, every class mixed: the model's own lab, whose right factor is 1 (an
  applied factor there is a false rescaling);
- each labelled set under ``--external``: other labs' images, whose reference factor is the
  one measured on all of the set's cells;

and for each count of ``--cells``, the sample's factor is estimated from that many of its
cells spread evenly through it (``Predictor.estimate_scale`` with ``SCALE_CELLS`` set to that
count), timed, and the whole sample classified at it. Reports per
source and count: the share of samples rescaled, the median and 90th percentile of the measured
factor's distance from the reference (``|log(measured / reference)|``), the mean accuracy and
the median seconds of an estimate.

Run: python benchmarks/scale_cells.py [--model models/wbc5-squeezenet1_1-128]
     [--manifest runs/manifests/wbc5-seed0.csv] [--cells 16,32,64] [--samples 20] [--size 100]
     [--out benchmarks/results/scale-cells.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results

import leukoscope.inference.predictor as predictor_module
from leukoscope.data.datasets import read_manifest, samples_from_folder
from leukoscope.data.preprocess import SCALE_CELLS
from leukoscope.inference.predictor import Predictor


def sample_rows(
    predictor: Predictor,
    paths: list[Path],
    labels: list[str],
    reference: float,
    counts: list[int],
    n_samples: int,
    size: int,
) -> dict[str, Any]:
    """The summary for each cell count over ``n_samples`` random samples of ``size`` cells."""
    rows: dict[str, list[dict[str, float]]] = {str(c): [] for c in counts}
    for seed in range(n_samples):
        chosen = np.random.default_rng(seed).choice(len(paths), min(size, len(paths)), False)
        sample, truth = [paths[i] for i in chosen], [labels[i] for i in chosen]
        for count in counts:
            start = time.perf_counter()
            with measuring(count):
                scale = predictor.estimate_scale(sample)
            seconds = time.perf_counter() - start
            predictions = predictor.predict_paths(sample, scale=scale)
            right = np.mean([p.label == y for p, y in zip(predictions, truth, strict=True)])
            measured = scale.measured if scale.measured is not None else 1.0
            rows[str(count)].append(
                {
                    "factor": scale.factor,
                    "distance": abs(float(np.log(measured / reference))),
                    "accuracy": float(right),
                    "seconds": seconds,
                }
            )
    return {count: summary(found) for count, found in rows.items()}


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    distances = [row["distance"] for row in rows]
    return {
        "samples": len(rows),
        "rescaled": round(float(np.mean([row["factor"] != 1.0 for row in rows])), 3),
        "distance_median": round(float(np.median(distances)), 4),
        "distance_p90": round(float(np.percentile(distances, 90)), 4),
        "accuracy_mean": round(float(np.mean([row["accuracy"] for row in rows])), 4),
        "seconds_median": round(statistics.median(row["seconds"] for row in rows), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/wbc5-squeezenet1_1-128"))
    parser.add_argument("--manifest", type=Path, default=Path("runs/manifests/wbc5-seed0.csv"))
    parser.add_argument("--external", type=Path, default=Path("../shared/data/external"))
    parser.add_argument("--cells", default="16,32,64", help="comma-separated cell counts")
    parser.add_argument("--samples", type=int, default=20, help="random samples per source")
    parser.add_argument("--size", type=int, default=100, help="cells per sample")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale-cells.json"))
    args = parser.parse_args()
    counts = [int(c) for c in args.cells.split(",")]
    predictor = Predictor.load(args.model)
    classes = predictor.classes
    sources: dict[str, tuple[list[Path], list[str], float]] = {}
    test, _ = read_manifest(args.manifest, "test", classes)
    sources["pbc-test"] = ([s.path for s in test], [classes[s.label] for s in test], 1.0)
    for images in sorted(args.external.glob("*/images")):
        samples, _ = samples_from_folder(images, classes)
        paths = [s.path for s in samples]
        truth = [classes[s.label] for s in samples]
        reference = estimate_all(predictor, paths)
        sources[images.parent.name] = (paths, truth, reference)
    results: dict[str, Any] = {}
    for name, (paths, truth, reference) in sources.items():
        rows = sample_rows(predictor, paths, truth, reference, counts, args.samples, args.size)
        results[name] = {"reference_factor": round(reference, 3), "cells": rows}
        print(name, results[name], flush=True)
    write_results(
        args.out,
        "scale cells",
        model=str(args.model),
        model_sha256=predictor.card.sha256,
        scale_cells=SCALE_CELLS,
        sample_size=args.size,
        results=results,
    )


@contextmanager
def measuring(cells: int) -> Iterator[None]:
    """``Predictor.estimate_scale`` measures up to ``cells`` cells meanwhile, not
    ``SCALE_CELLS``."""
    default = predictor_module.SCALE_CELLS
    predictor_module.SCALE_CELLS = cells
    try:
        yield
    finally:
        predictor_module.SCALE_CELLS = default


def estimate_all(predictor: Predictor, paths: list[Path]) -> float:
    """The factor measured on every one of ``paths`` (not only ``SCALE_CELLS`` of them)."""
    with measuring(len(paths)):
        measured = predictor.estimate_scale(paths).measured
    return 1.0 if measured is None else measured


if __name__ == "__main__":
    main()
