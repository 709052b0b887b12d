import numpy as np
import pytest
from scipy.special import softmax

from leukoscope.errors import LeukoscopeError
from leukoscope.inference.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def synthetic(
    temperature: float, n: int = 4000, classes: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    probs = softmax(logits / temperature, axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(temperature: float) -> None:
    logits, labels = synthetic(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.08)


def test_scaling_lowers_the_calibration_error_of_overconfident_logits() -> None:
    logits, labels = synthetic(2.5)
    before = expected_calibration_error(softmax(logits, axis=1), labels)
    fitted = fit_temperature(logits, labels)
    after = expected_calibration_error(softmax(logits / fitted, axis=1), labels)
    assert before > 0.1
    assert after < before / 3


def test_perfectly_calibrated_predictions_have_near_zero_ece() -> None:
    logits, labels = synthetic(1.0, n=20000)
    assert expected_calibration_error(softmax(logits, axis=1), labels) < 0.02


def test_reliability_bins_cover_every_prediction() -> None:
    logits, labels = synthetic(1.0, n=500)
    bins = reliability_bins(softmax(logits, axis=1), labels, n_bins=10)
    assert sum(b["count"] for b in bins) == 500
    assert all(b["lower"] <= b["confidence"] <= b["upper"] for b in bins)


def test_fit_temperature_rejects_mismatched_input() -> None:
    with pytest.raises(LeukoscopeError):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))
