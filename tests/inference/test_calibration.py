import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from leukoscope.errors import LeukoscopeError
from leukoscope.inference.calibration import (
    calibration_section,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    update_card,
)
from leukoscope.models import load_model
from tests.inference.tiny import Tiny


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


def test_calibration_section_writes_figures_and_reports_the_threshold(tmp_path: Path) -> None:
    logits, labels = synthetic(2.0, n=600)
    markdown, metrics = calibration_section(
        logits, labels, ["a", "b", "c", "d", "e"], 2.0, tmp_path, threshold=0.5
    )
    for name in ("reliability.png", "accuracy_coverage.png", "accuracy_coverage.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert metrics["ece_after"] < metrics["ece_before"]
    assert 0 < metrics["abstention"]["coverage"] < 1
    assert "![Reliability diagram](reliability.png)" in markdown
    curve = json.loads((tmp_path / "accuracy_coverage.json").read_text())
    assert curve["coverage"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(metrics["accuracy"], abs=1e-4)


def test_calibrate_stores_temperature_and_threshold_and_keeps_the_weights_valid(
    tiny: Tiny,
) -> None:
    _, card = load_model(tiny.model_dir)  # the sha256 of the weights still matches
    assert card["calibration"]["temperature"] > 0
    assert card["calibration"]["n"] == 80
    assert card["abstention"]["target_coverage"] == 0.95
    assert 0 < card["abstention"]["threshold"] < 1
    report = tiny.model_dir.parent / "calibration"
    assert (report / "calibration.md").read_text().startswith("# Calibration")
    metrics = json.loads((report / "calibration.json").read_text())
    assert metrics["abstention"]["coverage"] >= 0.95


def test_update_card_changes_only_the_card(tmp_path: Path, untrained: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(untrained, model_dir)
    weights = (model_dir / "model.safetensors").read_bytes()
    update_card(model_dir, calibration={"temperature": 1.5})
    assert (model_dir / "model.safetensors").read_bytes() == weights
    assert load_model(model_dir)[1]["calibration"] == {"temperature": 1.5}
