"""Cutting the white cells of a field out as single-cell images at PBC's framing."""

from __future__ import annotations

import numpy as np
import pytest

from leukoscope.cells.crops import cell_square, crop_cell, field_cells
from leukoscope.cells.fields import CellBox
from leukoscope.cells.locate import DEFAULT_CELL_FRACTION, CellLocation, locate_cell
from leukoscope.cells.locate import crop as locate_crop
from tests.cells.drawing import smear


def test_an_inner_cell_is_centred_at_the_framing_fraction() -> None:
    box = CellBox(100, 200, 200, 300, 1.0, False)
    x0, y0, side = cell_square(box, (1080, 1920), 0.4)
    assert side == 250
    assert (x0 + side / 2, y0 + side / 2) == (150, 250)


@pytest.mark.parametrize(
    ("box", "centre_x"),
    [
        (CellBox(0, 200, 40, 300, 1.0, True), 40 - 50),  # cut by the left edge
        (CellBox(560, 200, 640, 300, 1.0, True), 560 + 50),  # cut by the right edge
    ],
)
def test_a_cut_cell_keeps_its_size_and_its_whole_centre(box: CellBox, centre_x: float) -> None:
    x0, y0, side = cell_square(box, (480, 640), 0.5)
    assert side == 200  # the uncut side, 100 px, is the diameter
    assert x0 + side / 2 == centre_x and y0 + side / 2 == 250


def test_beyond_the_field_the_crop_is_the_fill_colour() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    crop = locate_crop(rgb, -20, 90, 40, 40, "border", np.array([200, 100, 50]))
    assert crop.shape == (40, 40, 3)
    assert (crop[:10, 20:] == 0).all()  # inside the field
    assert (crop[:, :20] == [200, 100, 50]).all() and (crop[10:] == [200, 100, 50]).all()
    with pytest.raises(ValueError, match="cell_fraction"):
        cell_square(CellBox(0, 0, 10, 10, 1.0, False), (100, 100), 0)


def test_every_cell_of_a_field_is_cut_out_as_pbc_frames_its_cells() -> None:
    cells = [(200, 150, 90), (520, 300, 110), (980, 300, 100)]
    rgb = smear((1000, 560), cells, red_cells=40, red_diameter=60)
    found = field_cells(rgb)
    assert len(found) == 3
    for cell in sorted(found, key=lambda c: c.box.x_min):
        height, width = cell.rgb.shape[:2]
        assert height == width
        location = locate_cell(cell.rgb)
        assert isinstance(location, CellLocation)
        if cell.box.edge:  # half the cell is beyond the field: the crop shows that half blank
            assert location.x < width / 2 and (cell.rgb[:, -10:] == cell.rgb[0, -1]).all()
            continue
        assert location.diameter / width == pytest.approx(DEFAULT_CELL_FRACTION, abs=0.06)
        assert abs(location.x - width / 2) < 0.05 * width
        assert abs(location.y - height / 2) < 0.05 * height
    assert sum(cell.box.edge for cell in found) == 1


def test_crop_cell_measures_the_background_itself() -> None:
    rgb = smear((400, 300), [(20, 150, 80)], red_cells=5, red_diameter=40)
    box = CellBox(0, 110, 61, 191, 1.0, True)
    crop = crop_cell(rgb, box)
    assert crop.shape[0] == round(81 / DEFAULT_CELL_FRACTION)  # the box is 81 px high
    assert np.abs(crop[0, 0].astype(int) - rgb[5, 200]).max() < 12  # the field's background
    assert field_cells(np.full((300, 400, 3), 230, np.uint8)) == []
