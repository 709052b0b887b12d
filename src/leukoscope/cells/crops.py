"""Cut every white cell out of a field image the way the classifier's training images were cut.

The released models learned from PBC crops: 360 px squares at PBC's magnification, one white
cell in the middle, red cells around it. They learned the cell's size in that frame too (a
monocyte fills about 0.46 of the side, a lymphocyte 0.30), so a crop that made every cell the
same fraction of the frame would hide a cue they rely on. :func:`field_cells` therefore finds
the white cells of a field (:func:`~leukoscope.cells.fields.locate_field`) and cuts around each
the square that a 360-px PBC crop covers at the field's magnification, measured by its red
cells: the side is ``360 * red cell diameter / PBC's red cell diameter`` (:data:`PBC_RED_CELL_
DIAMETER`). A field with too few red cells to measure is scaled by its white cells instead (their
median diameter against PBC's). The model's own preprocessing (resize, and framing if its card
asks for it) then applies as to any image. Where the square runs off the field it is filled with
the field's background colour, as a PBC crop's margin would be, never with a mirror image.

A cell cut by the field's edge is centred where the whole cell's centre would be, beyond the
cut (its diameter is the longer side of its box).

Measured (``benchmarks/fields.py``, fields tiled from PBC test images, ONNX exports): the
cells found and cut out so score 98.6% with pbc8-efficientnet_lite0 and 97.5% with
wbc5-squeezenet1_1, against 99.1% and 98.6% for the same images classified as files; at
0.6-1.6x PBC's magnification 0.9 and 0.7 points below them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leukoscope.cells.fields import CellBox, locate_field
from leukoscope.cells.framing import DEFAULT_CELL_FRACTION, crop
from leukoscope.cells.locate import background_colour

PBC_CROP_SIDE = 360
"""Side of a PBC image (360 x 363 px), in PBC's pixels."""

PBC_RED_CELL_DIAMETER = 65.0
"""Median red-cell diameter that :func:`~leukoscope.cells.fields.locate_field` measures on PBC
images: 65.4 and 64.9 px on 146 and 151 train-split images of the pbc8 and wbc5 classes
(``pbc_red_cell_diameter`` in ``benchmarks/results/fields-*.json``)."""

MAX_CELL_FRACTION = 0.8
"""A crop is at least this much wider than its cell, whatever the magnification measured."""

BACKGROUND_STRIDE = 4
"""The field's background colour is measured on every 4th pixel of every 4th row (the median of
the brightest tenth of 130,000 pixels of a 1920x1080 field: the same colour, 16 times faster)."""


@dataclass(frozen=True)
class FieldCell:
    """One white cell of a field: where it is and its square crop.

    Attributes
    ----------
    box : CellBox
        The cell's box in the field's pixels (``edge`` when it may be cut by the field's edge).
    rgb : ndarray of shape (S, S, 3), uint8
        The crop, at the field's resolution.
    side : int
        The side of the squares its field's cells were cut out as (:class:`Cuts`; a large cell's
        crop is wider); 0 when not known.
    """

    box: CellBox
    rgb: np.ndarray
    side: int = 0


def cell_diameter(box: CellBox) -> float:
    """A boxed cell's diameter: the geometric mean of its box's sides (the diameter of the
    circle with an elliptic cell's area), or for a box on the image's edge its longer side."""
    width, height = box.x_max - box.x_min, box.y_max - box.y_min
    return float(max(width, height) if box.edge else np.sqrt(width * height))


def cell_square(box: CellBox, shape: tuple[int, int], side: int) -> tuple[int, int, int]:
    """The square ``(x0, y0, side)`` centred on the boxed cell, or on the whole cell's
    estimated centre along a side where the image's edge cuts it; widened to hold the cell
    (:data:`MAX_CELL_FRACTION`)."""
    height, width = shape
    diameter = cell_diameter(box)
    side = max(side, round(diameter / MAX_CELL_FRACTION), 1)
    centres = []
    for low, high, limit in ((box.x_min, box.x_max, width), (box.y_min, box.y_max, height)):
        centre = (low + high) / 2
        if box.edge and high - low < diameter:
            if low <= 0 < high < limit:
                centre = high - diameter / 2
            elif high >= limit > low > 0:
                centre = low + diameter / 2
        centres.append(centre)
    return round(centres[0] - side / 2), round(centres[1] - side / 2), side


def crop_side(boxes: list[CellBox], red_cell_diameter: float | None) -> int:
    """The side, in the field's pixels, that a PBC crop covers at the field's magnification:
    from its red cells, else from its white cells' median diameter against PBC's
    (:data:`~leukoscope.cells.framing.DEFAULT_CELL_FRACTION` of the side)."""
    if red_cell_diameter is not None:
        return round(PBC_CROP_SIDE * red_cell_diameter / PBC_RED_CELL_DIAMETER)
    diameters = [cell_diameter(box) for box in boxes if not box.edge] or [
        cell_diameter(box) for box in boxes
    ]
    return round(float(np.median(diameters)) / DEFAULT_CELL_FRACTION)


def crop_cell(
    rgb: np.ndarray, box: CellBox, side: int, fill: np.ndarray | None = None
) -> np.ndarray:
    """The square of :func:`cell_square` cut from the field ``rgb``, filled with ``fill``
    (default: the field's background colour) beyond the field."""
    if fill is None:
        fill = field_background(rgb)
    x0, y0, side = cell_square(box, rgb.shape[:2], side)
    return crop(rgb, x0, y0, side, side, "border", fill)


def field_background(rgb: np.ndarray) -> np.ndarray:
    """The field's background colour (see :data:`BACKGROUND_STRIDE`)."""
    return background_colour(rgb[::BACKGROUND_STRIDE, ::BACKGROUND_STRIDE])


@dataclass(frozen=True)
class Cuts:
    """Where a field's white cells are, and the side of the square a PBC crop covers at its
    magnification: what :func:`cut_cells` needs to cut them out again without locating them
    (locating is most of the time a field takes).

    Attributes
    ----------
    boxes : list of CellBox
        In :func:`~leukoscope.cells.fields.locate_cells`' order (best score first).
    side : int
        :func:`crop_side` of the field (0 when it holds no white cell).
    """

    boxes: list[CellBox]
    side: int


def locate_cuts(rgb: np.ndarray) -> Cuts:
    """The :class:`Cuts` of a field image: its white cells located, its magnification measured."""
    located = locate_field(rgb)
    if not located.boxes:
        return Cuts([], 0)
    return Cuts(located.boxes, crop_side(located.boxes, located.red_cell_diameter))


def cut_cells(rgb: np.ndarray, cuts: Cuts) -> list[FieldCell]:
    """The white cells of the field ``rgb`` at ``cuts``, cut out as a PBC image of each would
    be (the field's background colour beyond its edges)."""
    if not cuts.boxes:
        return []
    fill = field_background(rgb)
    return [FieldCell(box, crop_cell(rgb, box, cuts.side, fill), cuts.side) for box in cuts.boxes]


def field_cells(rgb: np.ndarray, cuts: Cuts | None = None) -> list[FieldCell]:
    """Every white cell of a field image, located and cut out as a PBC image of it would be.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), uint8
        The field.
    cuts : Cuts, optional
        Where the field's cells were located before (a second pass over a sample): they are
        cut out there again without locating them.

    Returns
    -------
    list of FieldCell
        In :func:`~leukoscope.cells.fields.locate_cells`' order (best score first); empty when
        the field holds no white cell.
    """
    return cut_cells(rgb, locate_cuts(rgb) if cuts is None else cuts)
