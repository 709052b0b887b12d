"""Learning curves of few-shot lab adaptation (``leukoscope adapt``) on the external sets.

For each labelled set under ``--external`` (each folder's ``images/``), the model is adapted on
k cells per class drawn at random (per seed) and scored on every other cell of that set: never
on a cell it adapted on. A class with k or fewer cells adapts on all but one of them (a class
with one cell adapts on none and is only scored). k = 0 is the model as released, on the
whole set. Per set and k: mean, min and max over seeds of the accuracy and macro-F1, the
seconds one adaptation took, and the scored cells' confusion matrix summed over the seeds (true
classes by row, predicted by column, in the model's class order).

The adaptation is :func:`leukoscope.training.adapt.fine_tune` with ``adapt``'s default recipe
(or ``--steps``, ``--stages``, ``--lr``), in memory: nothing is written, and the recalibration
that ``adapt`` adds is left out (it changes confidences, not the predicted class; its
out-of-fold refits cost ``--folds`` more adaptations), unless ``--out-of-fold`` asks for the
balanced accuracy of those out-of-fold predictions, to set beside the scored cells'. The
external sets are for measuring and adapting; no released model is trained on them.

Magnification, as the commands do it: the cells adapted on are rescaled by the factor their
labels give (``adapt`` measures each against its own class and records it as the model's
``SampleScale.lab_factor``), and the scored cells, as the next sample ``predict`` is given, by
the factor the adapted model itself estimates for them: that lab factor when their cells,
classified at it, confirm it, else their own estimate; k = 0 by the source model's estimate for
the whole set. Both factors are recorded per run.

Run: .venv/bin/python benchmarks/adapt.py [--model models/wbc5-squeezenet1_1-128]
       [--external ../shared/data/external] [--k 1 5 10 20] [--seeds 3] [--steps 150]
       [--batch-size 32] [--stages 8] [--lr 5e-4] [--renormalise] [--out-of-fold]
       [--folds 3] [--out benchmarks/results/adapt.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_file import write_results
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from leukoscope.data.datasets import Sample, samples_from_folder
from leukoscope.inference.shift import MIN_RENORMALISE_CELLS
from leukoscope.models import ModelCard, TransferModel, load_model
from leukoscope.training.adapt import (
    AdaptOptions,
    Cells,
    fine_tune,
    lab_preprocessing,
    outputs,
    recalibrate,
    renormalise,
    rescaled_cells,
)

TARGETS = {"zheng2018-cellavision": 0.95, "zheng2018-tecom": 0.90}
"""Accuracy targets with 10 labelled cells per class (issue 12)."""
TARGET_K = 10


def split(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to adapt on (k per class, at most all but one) and the rest, to score on."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen += members[: min(k, len(members) - 1)].tolist()
    adapt_on = np.sort(np.array(chosen, dtype=int))
    return adapt_on, np.setdiff1d(np.arange(len(labels)), adapt_on)


def score(model: TransferModel, card: ModelCard, cells: Cells) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the classes present) and the confusion matrix (true classes
    by row, predicted by column, in the card's class order) of ``model`` on ``cells``."""
    logits, _ = outputs(model, card, cells.pixels)
    predicted, truth = logits.argmax(1), cells.labels
    return {
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(
            f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0)
        ),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "confusion": confusion_matrix(truth, predicted, labels=range(len(card.classes))),
    }


def mean_recall(confusion: np.ndarray, classes: list[int]) -> float | None:
    """The mean recall over ``classes`` (indices) of a confusion matrix with the true classes
    by row: the scored cells' balanced accuracy over the classes adapted on; None for none."""
    if not classes:
        return None
    rows = confusion[classes]
    return float(np.mean(rows[np.arange(len(classes)), classes] / rows.sum(axis=1)))


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), digits),
        "min": round(float(np.min(values)), digits),
        "max": round(float(np.max(values)), digits),
    }


def curve(
    model: TransferModel,
    card: ModelCard,
    samples: list[Sample],
    ks: list[int],
    seeds: int,
    options: AdaptOptions,
    save: Callable[[dict[str, Any]], None],
    renormalise_first: bool = False,
    out_of_fold: bool = False,
) -> dict[str, Any]:
    """The k = 0 row and one row per k, averaged over ``seeds``; ``save`` is handed the rows
    so far after each (a long run keeps what it measured). With ``renormalise_first``, each
    adaptation starts from the model renormalised on its k cells per class. With
    ``out_of_fold``, each run also records the balanced accuracy (mean recall) of the
    out-of-fold predictions ``adapt`` makes of the cells it adapted on (None when a class has
    too few cells for folds), to set against the scored cells' balanced accuracy: the adapted
    cells are class-balanced, the scored ones are not."""
    labels = np.array([s.label for s in samples])
    whole = rescaled_cells(samples, card, model, labelled=False)
    as_released = score(model, card, whole)
    rows: dict[str, Any] = {
        "0": as_released
        | {
            "confusion": as_released["confusion"].tolist(),
            "n_scored": len(whole.labels),
            "magnification": round(whole.scale.factor, 3),
        }
    }
    for k in ks:
        if renormalise_first and len(split(labels, k, 0)[0]) < MIN_RENORMALISE_CELLS:
            rows[str(k)] = {"skipped": f"fewer than {MIN_RENORMALISE_CELLS} cells to renormalise"}
            continue
        runs = []
        for seed in range(seeds):
            adapt_on, scored = split(labels, k, seed)
            start = time.perf_counter()
            cells = rescaled_cells([samples[i] for i in adapt_on], card, model, labelled=True)
            source = model
            if renormalise_first:
                source = renormalise(model, card, cells.pixels)
            seeded = dataclasses.replace(options, seed=seed)
            tuned = fine_tune(source, card, cells.pixels, cells.labels, seeded)
            seconds = time.perf_counter() - start
            recall = (
                recalibrate(tuned, source, card, cells, seeded, None).out_of_fold_recall
                if out_of_fold
                else {}
            )
            estimate = float(np.mean(list(recall.values()))) if recall else None
            lab_card = card.replace(preprocessing=lab_preprocessing(card, cells.scale))
            rest = rescaled_cells([samples[i] for i in scored], lab_card, tuned, labelled=False)
            result = score(tuned, lab_card, rest)
            same = [card.classes.index(c) for c in recall]
            runs.append(
                result
                | {
                    "seconds": seconds,
                    "n_adapt": len(cells.labels),
                    "n_scored": len(rest.labels),
                    "magnification_adapted": round(cells.scale.factor, 3),
                    "magnification_scored": round(rest.scale.factor, 3),
                }
                | (
                    {
                        "out_of_fold_balanced_accuracy": estimate,
                        "balanced_accuracy_same_classes": mean_recall(result["confusion"], same),
                    }
                    if out_of_fold
                    else {}
                )
            )
            print(f"  k={k} seed={seed}: {runs[-1] | {'confusion': '...'}}", flush=True)
        rows[str(k)] = {
            "accuracy": spread([r["accuracy"] for r in runs]),
            "macro_f1": spread([r["macro_f1"] for r in runs]),
            "seconds_per_adaptation": spread([r["seconds"] for r in runs], 1),
            "magnification_adapted": spread([r["magnification_adapted"] for r in runs], 3),
            "magnification_scored": spread([r["magnification_scored"] for r in runs], 3),
            "n_adapt": runs[0]["n_adapt"],
            "n_scored": runs[0]["n_scored"],
            "confusion_over_seeds": sum(r["confusion"] for r in runs).tolist(),
        }
        if out_of_fold:
            rows[str(k)]["runs"] = [
                {
                    key: r[key]
                    for key in (
                        "balanced_accuracy",
                        "balanced_accuracy_same_classes",
                        "out_of_fold_balanced_accuracy",
                    )
                }
                for r in runs
            ]
        save(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/wbc5-squeezenet1_1-128"))
    parser.add_argument("--external", type=Path, default=Path("../shared/data/external"))
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=AdaptOptions.steps)
    parser.add_argument("--batch-size", type=int, default=AdaptOptions.batch_size)
    parser.add_argument("--stages", type=int, default=AdaptOptions.trainable_stages)
    parser.add_argument("--lr", type=float, default=AdaptOptions.lr)
    parser.add_argument(
        "--renormalise",
        action="store_true",
        help="re-estimate the BatchNorm statistics on the k cells per class before each "
        "fine-tuning (tried, not kept: see docs/results.md)",
    )
    parser.add_argument(
        "--out-of-fold",
        action="store_true",
        help="also record the out-of-fold accuracy adapt estimates on the adapted cells "
        "(--folds more adaptations each)",
    )
    parser.add_argument("--folds", type=int, default=AdaptOptions.folds)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adapt.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, card = load_model(args.model)
    options = AdaptOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        trainable_stages=args.stages,
        folds=args.folds,
    )
    results: dict[str, Any] = {}
    for images in sorted(args.external.glob("*/images")):
        name = images.parent.name
        samples, _ = samples_from_folder(images, card.classes)
        counts = np.bincount([s.label for s in samples], minlength=len(card.classes))
        print(f"{name}: {len(samples)} cells", flush=True)
        results[name] = {
            "cells": {c: int(n) for c, n in zip(card.classes, counts, strict=True) if n},
            "target": {"k": TARGET_K, "accuracy": TARGETS.get(name)},
        }

        def save(rows: dict[str, Any], name: str = name) -> None:
            results[name]["k"] = rows
            write_results(
                args.out,
                "adapt",
                model=str(args.model),
                model_sha256=card.sha256,
                classes=list(card.classes),
                seeds=args.seeds,
                options={
                    "steps": options.steps,
                    "batch_size": options.batch_size,
                    "lr": options.lr,
                    "trainable_stages": options.trainable_stages,
                    "renormalise": args.renormalise,
                    "out_of_fold": args.out_of_fold,
                    "folds": options.folds,
                },
                sets=results,
            )

        curve(
            model,
            card,
            samples,
            args.k,
            args.seeds,
            options,
            save,
            args.renormalise,
            args.out_of_fold,
        )


if __name__ == "__main__":
    main()
