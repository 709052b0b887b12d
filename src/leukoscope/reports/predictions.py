"""Prediction files: one row per image as CSV, or the predictions with a summary as JSON.

Written by ``leukoscope predict``, ``differential`` (``cells.csv``) and ``demo``. For the cells
of field images (``--fields``) each row also holds the cell's box in its field, whose file is the
row's source, and whether the box touches the field's edge.
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
    from leukoscope.cells.fields import CellBox
    from leukoscope.inference.predictor import Prediction, Predictor
    from leukoscope.inference.shift import ShiftCheck

OUTPUT_SUFFIXES = (".csv", ".json")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max", "edge")
"""The columns a field cell's row adds: its box in the field (pixels, maxima exclusive) and 1
when the box touches the field's edge (the cell may be cut)."""


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


def box_fields(box: CellBox | None) -> dict[str, int] | None:
    """A field cell's :data:`BOX_COLUMNS` as a dict; None for a cell image or unreadable file."""
    if box is None:
        return None
    return {
        "x_min": box.x_min,
        "y_min": box.y_min,
        "x_max": box.x_max,
        "y_max": box.y_max,
        "edge": int(box.edge),
    }


_NO_BOX = dict.fromkeys(BOX_COLUMNS, "")


def predictions_csv(
    predictions: Sequence[Prediction],
    classes: Sequence[str],
    boxes: Sequence[CellBox | None] | None = None,
    shift: ShiftCheck | None = None,
) -> str:
    """One row per image: the call, its flag and score, then each class's probability, and a
    note when preprocessing flagged it (no cell found to frame, cut by a field's edge), and
    ``fallback``, true when the model's fallback made the call (the model was unsure). An
    unreadable file's row holds only its source and error: no zeros that read as results.
    With ``boxes`` (aligned with ``predictions``: the cells of field images) the rows go on
    with :data:`BOX_COLUMNS`.

    Every readable image's row ends with ``sample_shifted``, the sample's ``shift`` check
    (``true``, ``false``, empty without one), so that the file says by itself when its
    confident calls are no safer than its flagged ones: on another lab's rapid stain the
    released 128-px SqueezeNet left a quarter of the cells unflagged, 5% of them right.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = ["source", "label", "confidence", "uncertain", "score", "runner_up"]
    header = [*fields, "runner_up_probability", *(f"p_{c}" for c in classes)]
    header += ["error", "note", "fallback"]
    if boxes is not None:
        header += BOX_COLUMNS
    header.append("sample_shifted")
    writer.writerow(header)
    shifted = "" if shift is None else str(shift.shifted).lower()
    for p, box in zip(predictions, boxes or [None] * len(predictions), strict=True):
        where = [] if boxes is None else list((box_fields(box) or _NO_BOX).values())
        if p.error is not None:
            blank = [""] * (len(header) - 5 - len(where))
            writer.writerow([p.source, *blank, p.error, "", "", *where, ""])
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
                str(p.fallback).lower(),
                *where,
                shifted,
            ]
        )
    return buffer.getvalue()


def summarise(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Counts of images, unreadable files, flagged images, images the model's fallback
    classified and confident calls per class."""
    return {
        "images": len(predictions),
        "unreadable": sum(p.error is not None for p in predictions),
        "uncertain": sum(p.uncertain and p.error is None for p in predictions),
        "fallback": sum(p.fallback for p in predictions),
        "by_class": dict(
            Counter(p.label for p in predictions if p.error is None and not p.uncertain)
        ),
    }


def write_predictions(
    predictor: Predictor,
    predictions: Sequence[Prediction],
    out: Path,
    *,
    shift: ShiftCheck | None,
    boxes: Sequence[CellBox | None] | None = None,
    renormalised: int = 0,
) -> None:
    """Write the predictions atomically as CSV or JSON (by the file's suffix), with the
    sample's ``shift`` check (in JSON the whole check and how many of its cells the model was
    ``renormalised`` on, 0 for none) and, for the cells of field images, their ``boxes``
    (aligned with ``predictions``)."""
    check_output_suffix(out)
    if out.suffix.lower() == ".csv":
        atomic_write_text(out, predictions_csv(predictions, predictor.classes, boxes, shift))
        return
    records = [p.to_dict() for p in predictions]
    if boxes is not None:
        records = [r | {"box": box_fields(b)} for r, b in zip(records, boxes, strict=True)]
    atomic_write_json(
        out,
        {
            "model": predictor.card.arch,
            "backend": predictor.backend,
            "precision": predictor.precision,
            "fallback": None if predictor.fallback_dir is None else str(predictor.fallback_dir),
            "classes": list(predictor.classes),
            "calibrated": predictor.abstainer is not None,
            "renormalised_cells": renormalised,
            "summary": summarise(predictions),
            "shift": shift.to_dict() if shift else None,
            "predictions": records,
        },
    )
