"""Accuracy of released models on their held-out test split, against the project's targets.

Each model is scored with ``evaluate_model`` (the PyTorch predictor, as ``leukoscope evaluate``,
with the card's fallback model for the cells it flags uncertain, if it names one) on the test
split of the manifest it was released with; the manifest's sha256 must match the
one in the model card, so the numbers are on the images the model was never trained or
selected on.

Run: .venv/bin/python benchmarks/accuracy.py
       [--pair models/wbc5-efficientnet_lite0=runs/manifests/wbc5-seed0.csv ...]
       [--out benchmarks/results/accuracy.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from results_file import write_results

from leukoscope.data.datasets import read_manifest
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.fileio import sha256_file
from leukoscope.models import load_card

TARGETS: dict[int, dict[str, float]] = {
    5: {"accuracy": 0.995, "macro_f1": 0.99},
    8: {"accuracy": 0.99},
}
"""Minimum test scores by number of classes."""

DEFAULT_PAIRS = (
    "models/wbc5-efficientnet_lite0=runs/manifests/wbc5-seed0.csv",
    "models/pbc8-efficientnet_lite0=runs/manifests/pbc8-seed0.csv",
    "models/wbc5-squeezenet1_1=runs/manifests/wbc5-seed0.csv",
    "models/wbc5-squeezenet1_1-160=runs/manifests/wbc5-seed0.csv",
    "models/wbc5-squeezenet1_1-128=runs/manifests/wbc5-seed0.csv",
    "models/pbc8-squeezenet1_1=runs/manifests/pbc8-seed0.csv",
    "models/pbc8-squeezenet1_1-128=runs/manifests/pbc8-seed0.csv",
)


def score(model: Path, manifest: Path) -> dict[str, Any]:
    """Test-split metrics of one model and whether they meet the targets for its task."""
    card = load_card(model / "model_card.json")
    if card.release is None or card.release.manifest_sha256 != sha256_file(manifest):
        raise SystemExit(f"{manifest} is not the manifest {model} was released with")
    options = EvaluateOptions(throughput_runs=0, mistakes=0, heatmaps=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_model(
            model,
            lambda classes: read_manifest(manifest, "test", classes)[0],
            f"{manifest} (test split)",
            tmp,
            options=options,
        )
    targets = TARGETS.get(len(card.classes), {})
    return {
        "manifest": str(manifest),
        "classes": len(card.classes),
        "test_time_views": metrics["test_time_views"],
        "fallback": metrics["fallback"],
        "fallback_cells": metrics["fallback_cells"],
        "n_images": metrics["n_images"],
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "bootstrap_95ci": metrics["bootstrap_95ci"],
        "targets": targets,
        "met": {name: metrics[name] >= value for name, value in targets.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pair", action="append", help="MODEL_DIR=MANIFEST (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = parser.parse_args()
    results = {}
    for pair in args.pair or DEFAULT_PAIRS:
        model, _, manifest = pair.partition("=")
        results[model] = score(Path(model), Path(manifest))
        print(model, {k: results[model][k] for k in ("accuracy", "macro_f1", "met")}, flush=True)
    write_results(args.out, "accuracy", results=results)


if __name__ == "__main__":
    main()
