"""Distillation: soft targets from a teacher, cached, checked, and a student trained on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.datasets import read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.predictor import Predictor
from leukoscope.models import load_model
from leukoscope.training.distill import soft_targets, teacher_targets
from leukoscope.training.trainer import train
from tests.training.conftest import CLASSES, train_config


def test_soft_targets_mix_the_teacher_and_the_labels() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([1, 2])
    mixed = soft_targets(probabilities, labels, 0.5)
    assert mixed.dtype == np.float32 and np.allclose(mixed.sum(axis=1), 1)
    assert np.allclose(mixed[0], [0.35, 0.6, 0.05])
    assert np.array_equal(soft_targets(probabilities, labels, 0.0).argmax(1), labels)
    assert np.allclose(soft_targets(probabilities, labels, 1.0), probabilities)
    with pytest.raises(ValueError, match="weight"):
        soft_targets(probabilities, labels, 1.5)


def test_a_student_learns_from_a_teacher_and_names_it(
    tmp_path: Path, synthetic_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tmp_path / "teacher"
    train(train_config(synthetic_manifest, teacher, epochs=1))
    samples, _ = read_manifest(synthetic_manifest, "train", CLASSES)
    paths = [s.path for s in samples]
    labels = np.array([s.label for s in samples])
    cache = tmp_path / "cache"
    targets = teacher_targets(teacher, paths, labels, CLASSES, cache, workers=0)
    assert targets.shape == (len(paths), len(CLASSES)) and np.allclose(targets.sum(axis=1), 1)
    assert (targets[np.arange(len(labels)), labels] >= 0.5).all()  # half is the true label
    # A second run (a resumed training) reads them back instead of asking the teacher again.
    monkeypatch.setattr(Predictor, "outputs_for_paths", None)
    assert np.array_equal(teacher_targets(teacher, paths, labels, CLASSES, cache), targets)
    monkeypatch.undo()
    with pytest.raises(LeukoscopeError, match="the manifest's classes are"):
        teacher_targets(teacher, paths, labels, ("a", "b", "c"), cache)

    student = tmp_path / "student"
    train(train_config(synthetic_manifest, student, teacher=teacher, image_size=40, epochs=1))
    card = load_model(student)[1]
    assert card.training is not None and card.training.teacher == str(teacher)
    assert card.training.teacher_sha256 == load_model(teacher)[1].sha256
    assert "distilling from" in (student / "train.log").read_text()
