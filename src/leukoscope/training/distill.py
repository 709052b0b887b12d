"""Soft targets from a teacher model, to distil a large, accurate model into a small, fast one.

A student trained on the teacher's calibrated probabilities learns more than the labels say:
which classes a cell resembles and how strongly (Hinton et al., "Distilling the Knowledge in a
Neural Network", 2015). The targets here mix the teacher's probabilities, at the temperature
its card was calibrated with, and the true labels (``weight`` each), so that the student never
learns a teacher's mistake outright. The teacher sees every training image once, as it is used
for predictions (its own preprocessing and test-time views); the student sees its usual
augmented views of the image against the same target, since the augmentations keep the class.
The targets are cached in the run's cache folder, keyed by the teacher's weights, so a resumed
run does not recompute them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import safetensors.numpy

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes
from leukoscope.inference.softmax import softmax

DISTILL_WEIGHT = 0.5
"""Share of the teacher's probabilities in a target (the rest is the one-hot true label)."""


def soft_targets(
    probabilities: np.ndarray, labels: np.ndarray, weight: float = DISTILL_WEIGHT
) -> np.ndarray:
    """Targets mixing a teacher's probabilities with the true labels.

    Parameters
    ----------
    probabilities : ndarray of shape (N, C)
        The teacher's calibrated probabilities, rows summing to one.
    labels : ndarray of shape (N,)
        The true class indices.
    weight : float
        Share of the teacher's probabilities, in [0, 1].

    Returns
    -------
    ndarray of shape (N, C), float32
        Rows summing to one, for ``torch.nn.CrossEntropyLoss`` with probability targets.

    >>> soft_targets(np.array([[0.8, 0.2]]), np.array([1])).round(2).tolist()
    [[0.4, 0.6]]
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    one_hot = np.eye(probabilities.shape[1], dtype=np.float64)[labels]
    return (weight * probabilities + (1 - weight) * one_hot).astype(np.float32)


def teacher_targets(
    teacher: Path,
    paths: Sequence[Path],
    labels: np.ndarray,
    classes: Sequence[str],
    cache: Path,
    *,
    batch_size: int = 64,
    workers: int = 2,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The distillation targets of training images (:func:`soft_targets`).

    Parameters
    ----------
    teacher
        A saved model (directory) with the student's classes, in the same order.
    paths, labels
        The training images and their class indices.
    classes
        The student's classes.
    cache
        Folder where the targets are kept between runs of the same training.
    advance
        Called with the number of images the teacher has just classified.

    Raises
    ------
    LeukoscopeError
        When the teacher's classes differ from the student's, or it cannot read an image.
    """
    from leukoscope.data.preprocess import UNSCALED
    from leukoscope.inference.predictor import Predictor

    predictor = Predictor.load(teacher)
    if tuple(predictor.classes) != tuple(classes):
        raise LeukoscopeError(
            f"--teacher {teacher} predicts {', '.join(predictor.classes)}; the manifest's "
            f"classes are {', '.join(classes)}"
        )
    stored = cache / f"teacher-{predictor.card.sha256[:16]}.safetensors"
    if stored.is_file():
        probabilities = safetensors.numpy.load_file(stored)["probabilities"]
        if len(probabilities) == len(paths):
            return soft_targets(probabilities, labels)
    outputs = predictor.outputs_for_paths(
        paths, batch_size=batch_size, workers=workers, on_progress=advance, scale=UNSCALED
    )
    if outputs.errors:
        index, message = outputs.errors[0]
        raise LeukoscopeError(f"the teacher cannot read {paths[index]}: {message}")
    probabilities = softmax(outputs.logits.astype(np.float64) / predictor.temperature, axis=1)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stored, safetensors.numpy.save({"probabilities": probabilities}))
    return soft_targets(probabilities, labels)
