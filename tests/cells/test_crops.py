"""Cutting the white cells of a field out as PBC images of them would be."""

from __future__ import annotations

import numpy as np
import pytest

from leukoscope.cells.crops import (
    PBC_CROP_SIDE,
    PBC_RED_CELL_DIAMETER,
    cell_square,
    crop_cell,
    crop_side,
    field_cells,
)
from leukoscope.cells.fields import CellBox, locate_field
from leukoscope.cells.framing import DEFAULT_CELL_FRACTION
from leukoscope.cells.framing import crop as framing_crop
from tests.cells.drawing import smear


def test_an_inner_cell_is_centred_in_a_square_of_the_given_side() -> None:
    box = CellBox(100, 200, 200, 300, 1.0, False)
    x0, y0, side = cell_square(box, (1080, 1920), 250)
    assert side == 250 and (x0 + side / 2, y0 + side / 2) == (150, 250)
    assert cell_square(box, (1080, 1920), 50)[2] == 125  # widened to hold the cell


@pytest.mark.parametrize(
    ("box", "centre_x"),
    [
        (CellBox(0, 200, 40, 300, 1.0, True), 40 - 50),  # cut by the left edge
        (CellBox(560, 200, 640, 300, 1.0, True), 560 + 50),  # cut by the right edge
    ],
)
def test_a_cut_cell_is_centred_where_its_whole_centre_is(box: CellBox, centre_x: float) -> None:
    x0, y0, side = cell_square(box, (480, 640), 300)
    assert side == 300
    assert x0 + side / 2 == centre_x and y0 + side / 2 == 250


def test_the_side_follows_the_magnification_from_red_cells_else_white_cells() -> None:
    boxes = [CellBox(0, 0, 100, 100, 1.0, False), CellBox(0, 0, 60, 60, 1.0, False)]
    assert crop_side(boxes, PBC_RED_CELL_DIAMETER) == PBC_CROP_SIDE
    assert crop_side(boxes, PBC_RED_CELL_DIAMETER / 2) == PBC_CROP_SIDE / 2
    assert crop_side(boxes, None) == round(80 / DEFAULT_CELL_FRACTION)


def test_beyond_the_field_the_crop_is_the_fill_colour() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    crop = framing_crop(rgb, -20, 90, 40, 40, "border", np.array([200, 100, 50]))
    assert crop.shape == (40, 40, 3)
    assert (crop[:10, 20:] == 0).all()  # inside the field
    assert (crop[:, :20] == [200, 100, 50]).all() and (crop[10:] == [200, 100, 50]).all()


def test_every_cell_of_a_field_is_cut_out_at_the_scale_of_its_red_cells() -> None:
    cells = [(200, 150, 90), (520, 300, 110), (980, 300, 100)]
    rgb = smear((1000, 560), cells, red_cells=40, red_diameter=60)
    red_cells = locate_field(rgb).red_cell_diameter
    assert red_cells is not None and 45 < red_cells < 65  # stained area of 60-px discs
    found = sorted(field_cells(rgb), key=lambda c: c.box.x_min)
    assert len(found) == 3 and [c.box.edge for c in found] == [False, False, True]
    side = round(PBC_CROP_SIDE * red_cells / PBC_RED_CELL_DIAMETER)
    for cell, (x, y, _) in zip(found, cells, strict=True):
        assert cell.rgb.shape == (side, side, 3)
        x0, y0, _ = cell_square(cell.box, rgb.shape[:2], side)
        assert abs(x0 + side / 2 - x) < 8 and abs(y0 + side / 2 - y) < 8
    assert (found[-1].rgb[:, -10:] == found[-1].rgb[0, -1]).all()  # beyond the edge: filled


def test_crop_cell_measures_the_background_itself() -> None:
    rgb = smear((400, 300), [(20, 150, 80)], red_cells=5, red_diameter=40)
    crop = crop_cell(rgb, CellBox(0, 110, 61, 191, 1.0, True), 200)
    assert crop.shape == (200, 200, 3)
    assert np.abs(crop[0, 0].astype(int) - rgb[5, 200]).max() < 12  # the field's background
    assert field_cells(np.full((300, 400, 3), 230, np.uint8)) == []
