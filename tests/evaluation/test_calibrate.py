import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.datasets import evenly_spaced, read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.calibrate import (
    accuracy_coverage,
    calibrate,
    calibrate_renormalised,
    calibration_section,
)
from leukoscope.inference.abstention import Abstainer
from leukoscope.models import load_model
from leukoscope.training.adapt import cells_from_samples, outputs, renormalise
from tests.inference.test_calibration import synthetic
from tests.inference.tiny import Tiny


def test_accuracy_coverage_rises_when_low_scores_are_the_mistakes() -> None:
    scores = np.linspace(0, 1, 200)
    correct = scores > 0.2  # the 20% least confident are wrong
    curve = accuracy_coverage(scores, correct)
    assert curve["accuracy"][0] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(0.8, abs=0.01)
    assert curve["coverage"] == sorted(curve["coverage"])


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


def test_accuracy_of_kept_images_is_undefined_when_every_image_is_flagged(tmp_path: Path) -> None:
    logits, labels = synthetic(2.0, n=100)
    markdown, metrics = calibration_section(
        logits, labels, ["a", "b", "c", "d", "e"], 2.0, tmp_path, threshold=1.5
    )
    assert metrics["abstention"] == {"threshold": 1.5, "coverage": 0.0, "accuracy_kept": None}
    assert "every one of these images is flagged uncertain" in markdown
    assert (tmp_path / "accuracy_coverage.png").stat().st_size > 0


def test_calibrate_stores_temperature_and_threshold_and_keeps_the_weights_valid(
    tiny: Tiny,
) -> None:
    _, card = load_model(tiny.model_dir)  # the sha256 of the weights still matches
    assert card.calibration is not None and card.abstention is not None
    assert card.calibration.temperature > 0
    assert card.calibration.n == 80
    assert card.abstention.target_coverage == 0.95
    assert 0 < card.abstention.threshold < 1
    report = tiny.model_dir.parent / "calibration"
    assert (report / "calibration.md").read_text().startswith("# Calibration")
    metrics = json.loads((report / "calibration.json").read_text())
    assert metrics["abstention"]["coverage"] >= 0.95


def test_calibrate_fits_the_rule_of_the_renormalised_model_for_batchnorm_models(
    batchnorm: Tiny, tiny: Tiny
) -> None:
    model, card = load_model(batchnorm.model_dir)
    section = card.renormalised_abstention
    assert section is not None and section.target_coverage == card.abstention.target_coverage
    assert load_model(tiny.model_dir)[1].renormalised_abstention is None  # a SqueezeNet: none
    reference = Abstainer.load(batchnorm.model_dir, card, renormalised=True)
    source = Abstainer.load(batchnorm.model_dir, card)
    assert reference.temperature == source.temperature

    # The class means are those of the model renormalised on the training cells, computed here
    # directly, and the threshold keeps the target share of its validation cells.
    train, val = (
        cells_from_samples(
            evenly_spaced(read_manifest(batchnorm.manifest, split, card.classes)[0], 100), card
        )
        for split in ("train", "val")
    )
    assert len(train.labels) == 96 and len(val.labels) == 80  # every cell of the manifest
    renormalised = renormalise(model, card, train.pixels)
    features = outputs(renormalised, card, train.pixels)[1]
    means = np.stack([features[train.labels == c].mean(0) for c in range(len(card.classes))])
    np.testing.assert_allclose(reference.means, means, rtol=1e-4, atol=1e-4)
    assert not np.allclose(reference.means, source.means, atol=1e-3)
    kept = reference.scores(*outputs(renormalised, card, val.pixels)) >= section.threshold
    assert kept.mean() >= section.target_coverage


def test_calibrate_renormalised_refuses_a_model_without_batchnorm(
    tiny: Tiny, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny.model_dir, model_dir)
    with pytest.raises(LeukoscopeError, match="no BatchNorm"):
        calibrate_renormalised(model_dir, tiny.manifest)


def test_calibrate_drops_the_old_renormalised_rule_when_a_new_one_cannot_be_fitted(
    batchnorm: Tiny, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(batchnorm.model_dir, model_dir)
    rows = batchnorm.manifest.read_text().splitlines()
    train = [r for r in rows[1:] if ",train," in r]
    few = rows[:1] + train[:: len(train) // 20] + [r for r in rows[1:] if ",train," not in r]
    manifest = batchnorm.manifest.parent / "few-train.csv"  # paths are relative to it
    manifest.write_text("\n".join(few) + "\n")
    metrics = calibrate(model_dir, manifest, workers=0, out_dir=tmp_path / "report")
    assert "too few" in metrics["renormalised_abstention"]["error"]
    card = load_model(model_dir)[1]
    assert card.abstention is not None and card.renormalised_abstention is None
