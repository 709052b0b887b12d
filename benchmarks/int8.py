"""int8 calibration: how each way of setting activation ranges, with 7-bit or 8-bit weights,
keeps a model's accuracy.

For each model, the images of ``--split`` (validation by default: the calibration method is
chosen there, never on test) are classified by its fp32 ONNX export and by int8 exports
calibrated each way (``leukoscope export --int8 --calibration ... [--full-range]``) on the
manifest's training images; accuracy, errors and agreement with fp32 are compared on identical
pixels. 8-bit weights (``-full-range``) are exact only on CPUs with int8 dot-product
instructions (the machine record says whether this one has them); on a CPU without them the
full-range exports are run as those CPUs compute them (``onnx_session(exact_int8=True)``),
and their results say ``"arithmetic": "exact"``.

Run: python benchmarks/int8.py --models models/wbc5-squeezenet1_1-128,models/wbc5-squeezenet1_1
     --manifest runs/manifests/wbc5-seed0.csv [--split val] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results

from leukoscope.data.datasets import make_loader, read_manifest
from leukoscope.fileio import sha256_file
from leukoscope.inference.export import CALIBRATIONS, export_fp32, export_int8
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import inexact_here, onnx_runner, onnx_session

IMAGES_PER_CLASS = 32
"""Training images per class that calibrate each int8 export (``export``'s default)."""


def split_pixels(model: Path, manifest: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The split's readable images as the predictor decodes them (NHWC uint8 batches of 64)."""
    predictor = Predictor.load(model, backend="torch")
    samples, _ = read_manifest(manifest, split, predictor.classes)
    batches, labels = [], []
    for batch in make_loader(predictor.dataset(samples), batch_size=64):
        if len(batch.indices):
            batches.append(batch.images.numpy())
            labels.append(batch.labels.numpy())
    return batches, np.concatenate(labels)


def predict(onnx: Path, batches: list[np.ndarray], exact_int8: bool = False) -> np.ndarray:
    """Predicted classes (speed is ``benchmarks/inference.py``'s business)."""
    run = onnx_runner(onnx_session(onnx, exact_int8=exact_int8))
    return np.concatenate([run(b)[0].argmax(axis=1) for b in batches])


def compare(model: Path, manifest: Path, split: str) -> dict[str, Any]:
    batches, labels = split_pixels(model, manifest, split)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_fp32(model, Path(tmp) / "fp32.onnx")
        reference = predict(fp32, batches)
        results["fp32"] = {
            "accuracy": round(float((reference == labels).mean()), 4),
            "errors": int((reference != labels).sum()),
        }
        for calibration, full_range in itertools.product(CALIBRATIONS, (False, True)):
            name = f"int8-{calibration}" + ("-full-range" if full_range else "")
            int8 = export_int8(
                model,
                Path(tmp) / f"{name}.onnx",
                manifest,
                images_per_class=IMAGES_PER_CLASS,
                calibration=calibration,
                full_range=full_range,
            )
            exact = inexact_here(full_range)
            predicted = predict(int8, batches, exact_int8=exact)
            results[name] = {
                "accuracy": round(float((predicted == labels).mean()), 4),
                "errors": int((predicted != labels).sum()),
                "agreement_with_fp32": round(float((predicted == reference).mean()), 4),
            } | ({"arithmetic": "exact"} if exact else {})
    for name, result in results.items():
        print(f"{model.name} {name}: {result}", flush=True)
    return {"model": str(model), "n_images": len(labels), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", required=True, help="comma-separated model directories")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8.json"))
    args = parser.parse_args()

    models = [compare(Path(m), args.manifest, args.split) for m in args.models.split(",")]
    write_results(
        args.out,
        "int8 calibration",
        manifest=str(args.manifest),
        manifest_sha256=sha256_file(args.manifest),
        split=args.split,
        calibration_images_per_class=IMAGES_PER_CLASS,
        models=models,
    )


if __name__ == "__main__":
    main()
