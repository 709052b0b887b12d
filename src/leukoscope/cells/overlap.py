"""The same white cell in two overlapping fields of one smear: count it once.

A lab photographs a smear field by field, and neighbouring fields often overlap. When two
fields' overlap can be measured (:func:`field_offset`: phase correlation,
``skimage.registration.phase_cross_correlation``, on grey thumbnails, checked by the
correlation of the overlapping pixels), a cell of the new field whose box lands on a cell of
the earlier one at IoU >= :data:`MIN_IOU` is the same cell. When it cannot (the fields do not
overlap, or too little, or too differently lit), a cell that looks like an earlier one
(:func:`cell_likeness`: normalised cross-correlation of their grey patches,
``skimage.feature.match_template``) is only a possible duplicate, for a person to decide.

Phase correlation finds the strongest shift only: on drawn test smears (``tests/cells/
test_overlap.py``) overlaps of 30% of a field and more are found to within a few pixels; a small
overlap can be missed, and the cells it holds are then at most flagged as possible duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from skimage.feature import match_template
from skimage.registration import phase_cross_correlation

from leukoscope.cells.fields import CellBox

REGISTRATION_SIDE = 512
"""Longest side of the thumbnails fields are registered on: a pixel there is 4 of a 1920-px
field, well under a white cell's size, which is all box matching needs."""

MIN_OVERLAP = 0.05
"""Least share of the smaller field that must overlap for an offset to count."""

MIN_CORRELATION = 0.8
"""Least correlation of the two fields' overlapping pixels for the overlap to be known."""

MIN_IOU = 0.5
"""Boxes of two registered fields at least this IoU apart in the common frame are one cell."""

MIN_LIKENESS = 0.9
"""Least normalised cross-correlation of two cells' grey patches for a possible duplicate."""

PATCH_SIDE = 48
"""Longest side a cell's box is brought to before two cells are compared."""


@dataclass(frozen=True)
class Duplicate:
    """A cell of the new field seen before: in ``field`` (an index into the earlier fields),
    as its cell ``cell``; ``kind`` is ``"same"`` when the fields' overlap is known, else
    ``"possible"``."""

    kind: Literal["same", "possible"]
    field: int
    cell: int


def grey(rgb: np.ndarray) -> np.ndarray:
    """An RGB image as float32 grey levels."""
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)


def _thumbnail(image: np.ndarray, factor: float) -> np.ndarray:
    height, width = image.shape
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def field_offset(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float] | None:
    """Where the field ``moving`` lies in the field ``reference`` (grey images of one
    magnification): ``(dx, dy)`` such that pixel ``(x, y)`` of ``moving`` is pixel
    ``(x + dx, y + dy)`` of ``reference``; None when their overlap is not known with confidence.

    Phase correlation finds the shift modulo the images' size; each of the shifts it may stand
    for is checked by the correlation of the pixels the two images then share, and the best
    one counts when it is at least :data:`MIN_CORRELATION` over at least :data:`MIN_OVERLAP`
    of the smaller image.
    """
    factor = max(1.0, max(*reference.shape, *moving.shape) / REGISTRATION_SIDE)
    ref, mov = _thumbnail(reference, factor), _thumbnail(moving, factor)
    height = max(ref.shape[0], mov.shape[0])
    width = max(ref.shape[1], mov.shape[1])
    padded = []
    for image in (ref, mov):
        canvas = np.full((height, width), float(image.mean()), np.float32)
        canvas[: image.shape[0], : image.shape[1]] = image
        padded.append(canvas)
    shift, _, _ = phase_cross_correlation(padded[0], padded[1])
    sy, sx = float(shift[0]), float(shift[1])
    least = MIN_OVERLAP * min(ref.size, mov.size)
    best: tuple[float, float, float] | None = None
    for dy in {sy, sy - height, sy + height}:
        for dx in {sx, sx - width, sx + width}:
            score = _overlap_correlation(ref, mov, round(dx), round(dy), least)
            if score is not None and (best is None or score > best[0]):
                best = (score, dx, dy)
    if best is None or best[0] < MIN_CORRELATION:
        return None
    return best[1] * factor, best[2] * factor


def _overlap_correlation(
    ref: np.ndarray, mov: np.ndarray, dx: int, dy: int, least: float
) -> float | None:
    """Pearson correlation of the pixels ``ref`` and ``mov`` share when ``mov``'s pixel
    ``(x, y)`` is ``ref``'s ``(x + dx, y + dy)``; None when they share fewer than ``least``."""
    y0, y1 = max(0, dy), min(ref.shape[0], mov.shape[0] + dy)
    x0, x1 = max(0, dx), min(ref.shape[1], mov.shape[1] + dx)
    if y1 <= y0 or x1 <= x0 or (y1 - y0) * (x1 - x0) < least:
        return None
    a = ref[y0:y1, x0:x1].ravel()
    b = mov[y0 - dy : y1 - dy, x0 - dx : x1 - dx].ravel()
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def box_iou(a: CellBox, b: CellBox, dx: float = 0.0, dy: float = 0.0) -> float:
    """Intersection over union of ``a`` and ``b`` moved by ``(dx, dy)``."""
    width = min(a.x_max, b.x_max + dx) - max(a.x_min, b.x_min + dx)
    height = min(a.y_max, b.y_max + dy) - max(a.y_min, b.y_min + dy)
    inter = max(0.0, width) * max(0.0, height)
    area_a = (a.x_max - a.x_min) * (a.y_max - a.y_min)
    area_b = (b.x_max - b.x_min) * (b.y_max - b.y_min)
    return inter / (area_a + area_b - inter) if inter else 0.0


def cell_likeness(field_a: np.ndarray, a: CellBox, field_b: np.ndarray, b: CellBox) -> float:
    """How alike two cells look: the best normalised cross-correlation of ``a``'s grey patch
    over ``b``'s, widened by a quarter on each side, both scaled so that ``a``'s box is
    :data:`PATCH_SIDE` pixels at most (0 when their sizes differ by more than a quarter)."""
    size_a = np.hypot(a.x_max - a.x_min, a.y_max - a.y_min)
    size_b = np.hypot(b.x_max - b.x_min, b.y_max - b.y_min)
    if not 0.8 <= size_a / max(size_b, 1.0) <= 1.25:
        return 0.0
    factor = max(1.0, max(a.x_max - a.x_min, a.y_max - a.y_min) / PATCH_SIDE)
    template = _thumbnail(field_a[a.y_min : a.y_max, a.x_min : a.x_max], factor)
    margin_x, margin_y = (b.x_max - b.x_min) // 4, (b.y_max - b.y_min) // 4
    region = field_b[
        max(0, b.y_min - margin_y) : b.y_max + margin_y,
        max(0, b.x_min - margin_x) : b.x_max + margin_x,
    ]
    image = _thumbnail(region, factor)
    if image.shape[0] < template.shape[0] or image.shape[1] < template.shape[1]:
        return 0.0
    return float(match_template(image, template).max())


def find_duplicates(
    field: np.ndarray, boxes: Sequence[CellBox], earlier: Sequence[tuple[np.ndarray, list[CellBox]]]
) -> list[Duplicate | None]:
    """For each cell of a new field, the earlier cell it repeats, if any.

    Parameters
    ----------
    field : ndarray of shape (H, W), float32
        The new field in grey (:func:`grey`).
    boxes : sequence of CellBox
        Its cells.
    earlier : sequence of (ndarray, list of CellBox)
        The sample's earlier fields in grey, each with its cells' boxes.

    Returns
    -------
    list of Duplicate or None
        Aligned with ``boxes``: the first earlier field registered with this one that holds the
        cell at IoU >= :data:`MIN_IOU`; else the first cell of a field whose overlap is unknown
        that looks alike (:data:`MIN_LIKENESS`); else None.
    """
    found: list[Duplicate | None] = [None] * len(boxes)
    for index, (other, other_boxes) in enumerate(earlier):
        if not other_boxes:
            continue
        offset = field_offset(other, field)
        for k, box in enumerate(boxes):
            if found[k] is not None and found[k].kind == "same":  # type: ignore[union-attr]
                continue
            if offset is not None:
                ious = [box_iou(o, box, *offset) for o in other_boxes]
                best = int(np.argmax(ious))
                if ious[best] >= MIN_IOU:
                    found[k] = Duplicate("same", index, best)
            elif found[k] is None:
                for j, o in enumerate(other_boxes):
                    if cell_likeness(field, box, other, o) >= MIN_LIKENESS:
                        found[k] = Duplicate("possible", index, j)
                        break
    return found
