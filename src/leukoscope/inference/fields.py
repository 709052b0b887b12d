"""Classify every white cell of field images: located, cut out as the model's training images
were (:mod:`leukoscope.cells.crops`), classified, and kept with the field and box they came from.

Used by ``leukoscope predict --fields``, ``leukoscope differential --fields`` and the web app.
A cell cut by the field's edge is classified like the others but flagged uncertain, with a note,
so that a person decides: part of it may be missing. An unreadable field becomes one error
entry and never stops the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from leukoscope.cells.crops import Cuts, FieldCell, field_cells
from leukoscope.cells.fields import CellBox
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import UNSCALED
from leukoscope.errors import ImageDecodeError
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.inference.shift import ShiftCheck

EDGE_NOTE = "cut by the field's edge: part of the cell may be missing"


@dataclass(frozen=True)
class FieldPrediction:
    """One white cell of a field and the model's call on it, or an unreadable field.

    Attributes
    ----------
    prediction : Prediction
        Its ``source`` is the field's; ``error`` set (and ``box`` None) for an unreadable field.
    box : CellBox or None
        Where the cell is in the field.
    """

    prediction: Prediction
    box: CellBox | None = None
    side: int = 0
    """The side of the squares its field's cells were cut out as (:class:`~leukoscope.cells.
    crops.Cuts`; 0 when not known)."""


def classify_cells(
    predictor: Predictor, cells: Sequence[FieldCell], source: str
) -> list[FieldPrediction]:
    """The model's call on each cut-out cell of the field ``source``; cells on the field's edge
    are flagged uncertain with :data:`EDGE_NOTE`."""
    if not cells:
        return []
    images = [Image.fromarray(cell.rgb) for cell in cells]
    # The crops are cut at the training images' magnification already (from the field's red
    # cells): the sample rescaling of cell images must not measure and rescale them again.
    predictions = predictor.predict_images(images, [source] * len(cells), UNSCALED)
    return [
        FieldPrediction(
            _flag_edge(prediction) if cell.box.edge else prediction, cell.box, cell.side
        )
        for cell, prediction in zip(cells, predictions, strict=True)
    ]


def classify_field(
    predictor: Predictor, rgb: np.ndarray, source: str, cuts: Cuts | None = None
) -> list[FieldPrediction]:
    """Locate, cut out and classify every white cell of one decoded field; given its
    ``cuts``, cut there without locating."""
    return classify_cells(predictor, field_cells(rgb, cuts), source)


def classify_field_paths(
    predictor: Predictor,
    paths: Sequence[str | Path],
    on_progress: Callable[[int], None] | None = None,
    cuts: Mapping[str, Cuts] | None = None,
) -> list[FieldPrediction]:
    """Every white cell of every field file, in input order; an unreadable file gives one entry
    with its error. ``on_progress(1)`` after each file.

    ``cuts`` (by path, see :func:`field_cuts`) gives the cells of fields located before, as a
    second pass over a sample does: those are cut out again without locating them.
    """
    results: list[FieldPrediction] = []
    for path in paths:
        try:
            rgb = np.asarray(decode_rgb(path))
        except ImageDecodeError as exc:
            results.append(FieldPrediction(predictor.error_prediction(str(path), str(exc))))
        else:
            known = None if cuts is None else cuts.get(str(path))
            results.extend(classify_field(predictor, rgb, str(path), known))
        if on_progress is not None:
            on_progress(1)
    return results


def field_cuts(cells: Sequence[FieldPrediction]) -> dict[str, Cuts]:
    """The :class:`~leukoscope.cells.crops.Cuts` of each field with cells among ``cells`` (by
    its path), to cut them out again without locating them."""
    found: dict[str, tuple[int, list[CellBox]]] = {}
    for cell in cells:
        if cell.box is not None and cell.side:
            found.setdefault(cell.prediction.source, (cell.side, []))[1].append(cell.box)
    return {source: Cuts(boxes, side) for source, (side, boxes) in found.items()}


def field_shift(predictor: Predictor, cells: Sequence[FieldPrediction]) -> ShiftCheck | None:
    """The shift check (:meth:`Predictor.check_shift`) on the fields' cells, leaving out those
    on a field's edge."""
    return predictor.check_shift(
        [c.prediction for c in cells], [c.box is not None and c.box.edge for c in cells]
    )


def _flag_edge(prediction: Prediction) -> Prediction:
    note = EDGE_NOTE if prediction.note is None else f"{prediction.note}; {EDGE_NOTE}"
    return dataclasses.replace(prediction, uncertain=True, note=note)
