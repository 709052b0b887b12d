"""Prediction files: one row per image as CSV, or the predictions with a summary as JSON.

Written by ``leukoscope predict``, ``differential`` (``cells.csv``) and ``demo``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from leukoscope.inference.predictor import Prediction, Predictor

OUTPUT_SUFFIXES = (".csv", ".json")


def check_output_suffix(out: Path) -> None:
    """Refuse an output file whose suffix is not one :func:`write_predictions` writes, before
    any image is classified.

    Raises
    ------
    LeukoscopeError
        The suffix is neither ``.csv`` nor ``.json``.
    """
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise LeukoscopeError(f"{out}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")


def predictions_csv(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """One row per image: the call, its flag and score, then each class's probability, and a
    note when preprocessing flagged it (no cell found to frame). An unreadable file's row
    holds only its source and error: no zeros that read as results."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = ["source", "label", "confidence", "uncertain", "score", "runner_up"]
    header = [*fields, "runner_up_probability", *(f"p_{c}" for c in classes), "error", "note"]
    writer.writerow(header)
    for p in predictions:
        if p.error is not None:
            writer.writerow([p.source, *[""] * (len(header) - 3), p.error, ""])
            continue
        writer.writerow(
            [
                p.source,
                p.label,
                f"{p.confidence:.6f}",
                str(p.uncertain).lower(),
                f"{p.score:.6f}",
                p.runner_up or "",
                f"{p.runner_up_probability:.6f}",
                *(f"{p.probabilities[c]:.6f}" for c in classes),
                "",
                p.note or "",
            ]
        )
    return buffer.getvalue()


def summarise(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Counts of images, unreadable files, flagged images and confident calls per class."""
    return {
        "images": len(predictions),
        "unreadable": sum(p.error is not None for p in predictions),
        "uncertain": sum(p.uncertain and p.error is None for p in predictions),
        "by_class": dict(
            Counter(p.label for p in predictions if p.error is None and not p.uncertain)
        ),
    }


def write_predictions(predictor: Predictor, predictions: Sequence[Prediction], out: Path) -> None:
    """Write the predictions atomically as CSV or JSON (by the file's suffix)."""
    check_output_suffix(out)
    if out.suffix.lower() == ".csv":
        atomic_write_text(out, predictions_csv(predictions, predictor.classes))
        return
    atomic_write_json(
        out,
        {
            "model": predictor.card.arch,
            "backend": predictor.backend,
            "classes": list(predictor.classes),
            "calibrated": predictor.abstainer is not None,
            "summary": summarise(predictions),
            "shift": shift.to_dict() if (shift := predictor.check_shift(predictions)) else None,
            "predictions": [p.to_dict() for p in predictions],
        },
    )
