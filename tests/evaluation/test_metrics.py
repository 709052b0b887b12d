from __future__ import annotations

import numpy as np
import pytest

from leukoscope.evaluation.metrics import (
    accuracy_and_macro_f1,
    bootstrap_intervals,
    classification_metrics,
)

CLASSES = ("basophil", "eosinophil", "lymphocyte")


def test_metrics_of_a_known_confusion_matrix() -> None:
    # Truth:      4 basophils, 4 eosinophils, 2 lymphocytes.
    # Basophils: 3 right, 1 called eosinophil; eosinophils: all right;
    # lymphocytes: 1 right, 1 called basophil.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, CLASSES, resamples=200)

    assert m["confusion_matrix"] == [[3, 1, 0], [0, 4, 0], [1, 0, 1]]
    assert m["n_images"] == 10 and m["classes"] == list(CLASSES)
    assert m["accuracy"] == pytest.approx(0.8)
    precision = {"basophil": 3 / 4, "eosinophil": 4 / 5, "lymphocyte": 1.0}
    recall = {"basophil": 3 / 4, "eosinophil": 1.0, "lymphocyte": 1 / 2}
    for name in CLASSES:
        p, r = precision[name], recall[name]
        assert m["per_class"][name]["precision"] == pytest.approx(p)
        assert m["per_class"][name]["recall"] == pytest.approx(r)
        assert m["per_class"][name]["f1"] == pytest.approx(2 * p * r / (p + r))
    assert [m["per_class"][c]["support"] for c in CLASSES] == [4, 4, 2]
    f1s = [m["per_class"][c]["f1"] for c in CLASSES]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(list(recall.values())))
    assert m["weighted_avg"]["f1"] == pytest.approx(np.average(f1s, weights=[4, 4, 2]))
    low, high = m["bootstrap_95ci"]["accuracy"]
    assert low < 0.8 < high and low >= 0 and high <= 1
    assert m["bootstrap_95ci"]["resamples"] == 200


def test_a_subset_of_classes_keeps_the_model_index_space() -> None:
    # Only classes 0 and 2 are present; one lymphocyte is mistaken for the absent class 1.
    y_true = np.array([0, 0, 2, 2, 2])
    y_pred = np.array([0, 0, 2, 2, 1])
    m = classification_metrics(y_true, y_pred, CLASSES, resamples=50)
    assert m["classes_evaluated"] == ["basophil", "lymphocyte"]
    assert set(m["per_class"]) == {"basophil", "lymphocyte"}
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 1, 2]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["per_class"]["lymphocyte"]["recall"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((1.0 + 0.8) / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def test_bootstrap_is_seeded_and_degenerate_for_perfect_predictions() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.9, y_true, (y_true + 1) % 3)
    first = bootstrap_intervals(y_true, y_pred, resamples=300, seed=5)
    assert first == bootstrap_intervals(y_true, y_pred, resamples=300, seed=5)
    assert first != bootstrap_intervals(y_true, y_pred, resamples=300, seed=6)
    accuracy, macro_f1 = accuracy_and_macro_f1(y_true, y_pred)
    assert first["accuracy"][0] < accuracy < first["accuracy"][1]
    assert first["macro_f1"][0] < macro_f1 < first["macro_f1"][1]
    perfect = bootstrap_intervals(y_true, y_true, resamples=50)
    assert perfect == {"accuracy": [1.0, 1.0], "macro_f1": [1.0, 1.0]}


def test_no_predictions_is_an_error() -> None:
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics(np.array([]), np.array([]), CLASSES)
