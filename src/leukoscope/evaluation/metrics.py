"""Classification metrics from scikit-learn, with seeded bootstrap confidence intervals.

Labels are indices into the model's classes. When the evaluated data hold only some of them,
per-class and macro scores cover the classes present in the ground truth; predictions of
absent classes still count as errors, and the confusion matrix keeps the model's full index
space so that such errors stay visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    recall_score,
)

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def accuracy_and_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes present in ``y_true`` (cheap, for every epoch)."""
    present = np.unique(y_true)
    return (
        float(accuracy_score(y_true, y_pred)),
        float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
    )


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (images resampled with replacement) for accuracy and
    macro-F1; macro-F1 always averages over the classes present in the full ``y_true``."""
    rng = np.random.default_rng(seed)
    present = np.unique(y_true)
    scores = np.empty((resamples, 2))
    for i in range(resamples):
        pick = rng.integers(len(y_true), size=len(y_true))
        t, p = y_true[pick], y_pred[pick]
        scores[i] = (
            accuracy_score(t, p),
            f1_score(t, p, labels=present, average="macro", zero_division=0),
        )
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail], axis=0)
    return {
        "accuracy": [float(low[0]), float(high[0])],
        "macro_f1": [float(low[1]), float(high[1])],
    }


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything ``metrics.json`` reports about predictions, from scikit-learn."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise ValueError("no predictions to score")
    present = np.unique(y_true)
    names = [classes[i] for i in present]
    report = classification_report(
        y_true, y_pred, labels=present, target_names=names, output_dict=True, zero_division=0
    )
    accuracy, macro_f1 = accuracy_and_macro_f1(y_true, y_pred)
    return {
        "n_images": len(y_true),
        "classes": list(classes),
        "classes_evaluated": names,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        # Balanced accuracy is the mean recall over the classes present; computed this way
        # it does not warn about predictions of classes absent from the data.
        "balanced_accuracy": float(
            recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class": {
            name: {
                "precision": report[name]["precision"],
                "recall": report[name]["recall"],
                "f1": report[name]["f1-score"],
                "support": int(report[name]["support"]),
            }
            for name in names
        },
        "macro_avg": _averages(report["macro avg"]),
        "weighted_avg": _averages(report["weighted avg"]),
        "confusion_matrix": confusion_matrix(
            y_true, y_pred, labels=np.arange(len(classes))
        ).tolist(),
        "bootstrap_95ci": {
            **bootstrap_intervals(y_true, y_pred, resamples=resamples, seed=seed),
            "resamples": resamples,
            "seed": seed,
        },
    }


def _averages(row: dict[str, float]) -> dict[str, float]:
    return {
        "precision": row["precision"],
        "recall": row["recall"],
        "f1": row["f1-score"],
        "support": int(row["support"]),
    }
