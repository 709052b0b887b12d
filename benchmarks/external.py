"""Released models on other labs' images, beside their own PBC test split.

Each model is scored with ``evaluate_model`` (the predictor users get, preprocessing, test-time
views and abstention included) on every labelled set under ``--external`` (each folder's
``images/``, class folders with PBC names) and on the test split of the manifest it was released
with (skipped, with the reason recorded, when that manifest is not at ``--manifests``). Per set:
accuracy, macro-F1, balanced accuracy, the share of cells flagged uncertain, the accuracy of the
cells kept, and the expected calibration error at the card's temperature.

The external sets measure; they never train a released model.

Each model is scored as it is (``evaluate``'s ``--no-renormalise``): what ``evaluate`` and
``predict`` give by default, renormalising a sample that looks shifted, is measured by
``benchmarks/samples.py``.

``--renormalise`` scores each model after ``leukoscope adapt --unlabelled`` on the very images
it then classifies (their labels unused): the lab-adapted model a lab gets from its own cells,
and on the PBC test split what renormalising costs in the training lab. Models without
BatchNorm layers are skipped, with the reason recorded.

Run: .venv/bin/python benchmarks/external.py [--models models/a models/b ...]
       [--external ../shared/data/external] [--manifests runs/manifests] [--no-pbc-test]
       [--as-is] [--renormalise] [--out benchmarks/results/external.json]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from results_file import write_results

from leukoscope.data.datasets import Sample, read_manifest, samples_from_folder
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.fileio import sha256_file
from leukoscope.models.card import ModelCard, load_card
from leukoscope.training.adapt import AdaptOptions, adapt

TARGETS = {
    "zheng2018-cellavision": {"accuracy": 0.85, "accuracy_kept": 0.95},
    "zheng2018-tecom": {"accuracy": 0.70, "accuracy_kept": 0.95},
}
"""Zero-shot targets of the released 5-class model on the two shared sets."""


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures this benchmark reports, from ``evaluate_model``'s metrics."""
    calibration = metrics["calibration"]
    abstention = calibration.get("abstention")
    return {
        "n_images": metrics["n_images"],
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "uncertain_share": round(1 - abstention["coverage"], 4) if abstention else None,
        "fallback_cells": metrics["fallback_cells"],
        "accuracy_kept": abstention["accuracy_kept"] if abstention else None,
        "ece": calibration["ece_after"],
        "confusion_matrix": metrics["confusion_matrix"],
        "magnification": metrics["magnification"],
    }


def score(
    model: Path,
    samples_for: Callable[[Sequence[str]], list[Sample]],
    description: str,
    rescale: bool = True,
    renormalise_on: Path | None = None,
) -> dict[str, Any]:
    """``evaluate_model`` without timing, mistakes or heatmaps, summarised; with
    ``renormalise_on`` (a folder of images), of the model adapted to them without labels, or the
    reason it could not be adapted."""
    options = EvaluateOptions(
        throughput_runs=0, mistakes=0, heatmaps=False, rescale=rescale, renormalise=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        if renormalise_on is not None:
            try:
                unlabelled = AdaptOptions(labelled=False)
                model = adapt(model, renormalise_on, Path(tmp) / "model", options=unlabelled).path
            except LeukoscopeError as exc:
                return {"skipped": str(exc)}
        return summary(evaluate_model(model, samples_for, description, tmp, options=options))


def samples_in(folder: Path, classes: Sequence[str]) -> list[Sample]:
    """The images of ``classes`` in the class folders under ``folder``."""
    return samples_from_folder(folder, classes)[0]


def linked(samples: Sequence[Sample], folder: Path) -> Path:
    """``folder`` holding a link to each sample's file (to adapt on a manifest's split)."""
    folder.mkdir()
    for i, sample in enumerate(samples):
        (folder / f"{i:05d}{sample.path.suffix}").symlink_to(sample.path.resolve())
    return folder


def released_manifest(card: ModelCard, manifests: Path, model: Path) -> Path | str:
    """The manifest under ``manifests`` the model was released with, or why there is none."""
    release = card.release
    if release is None:
        return f"{model} is not a released model (its card names no manifest)"
    manifest = manifests / release.manifest
    if not manifest.is_file():
        return f"{manifest} not found (make it with `leukoscope data split`)"
    if sha256_file(manifest) != release.manifest_sha256:
        return f"{manifest} is not the manifest {model} was released with"
    return manifest


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--models`` (default: every released model), ``--external`` and ``--manifests``."""
    parser.add_argument("--models", nargs="*", type=Path)
    parser.add_argument("--external", type=Path, default=Path("../shared/data/external"))
    parser.add_argument("--manifests", type=Path, default=Path("runs/manifests"))


def models_or_released(models: list[Path] | None) -> list[Path]:
    """``models``, or when none are named every model folder under ``models/``."""
    return models or sorted(p.parent for p in Path("models").glob("*/model_card.json"))


def pbc_test(
    model: Path, manifests: Path, rescale: bool, renormalise: bool = False
) -> dict[str, Any]:
    """The model's own PBC test split (with ``renormalise``, after adapting to it without
    labels), or the reason it could not be scored."""
    card = load_card(model / "model_card.json")
    manifest = released_manifest(card, manifests, model)
    if isinstance(manifest, str):
        return {"skipped": manifest}

    def samples_for(classes: Sequence[str]) -> list[Sample]:
        return read_manifest(manifest, "test", classes)[0]

    with tempfile.TemporaryDirectory() as tmp:
        images = linked(samples_for(card.classes), Path(tmp) / "test") if renormalise else None
        return score(model, samples_for, f"{manifest} (test)", rescale, images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_model_options(parser)
    parser.add_argument(
        "--no-pbc-test",
        dest="pbc_test",
        action="store_false",
        help="skip the PBC test split (benchmarks/accuracy.py scores it too)",
    )
    parser.add_argument(
        "--as-is",
        dest="rescale",
        action="store_false",
        help="score each set's images as they are, not rescaled to the training magnification",
    )
    parser.add_argument(
        "--renormalise",
        action="store_true",
        help="score each model adapted without labels to the images it classifies",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/external.json"))
    args = parser.parse_args()
    models = models_or_released(args.models)
    sets = sorted(p.parent for p in args.external.glob("*/images"))
    if not sets:
        raise SystemExit(f"{args.external}: no labelled sets (folders with images/)")
    results: dict[str, Any] = {}
    for model in models:
        row: dict[str, Any] = {}
        for folder in sets:
            images = folder / "images"
            row[folder.name] = score(
                model,
                partial(samples_in, images),
                str(images),
                args.rescale,
                images if args.renormalise else None,
            )
            print(model, folder.name, row[folder.name].get("accuracy"), flush=True)
        if args.pbc_test:
            row["pbc_test"] = pbc_test(model, args.manifests, args.rescale, args.renormalise)
            print(model, "pbc_test", row["pbc_test"].get("accuracy"), flush=True)
        results[str(model)] = row
    write_results(
        args.out,
        "external",
        targets=TARGETS,
        rescaled=args.rescale,
        renormalised=args.renormalise,
        results=results,
    )


if __name__ == "__main__":
    main()
