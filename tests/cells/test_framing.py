"""Framing a located cell: its side from the cell's diameter, and the fill beyond the image."""

from __future__ import annotations

import numpy as np
import pytest

from leukoscope.cells.framing import DEFAULT_CELL_FRACTION, frame_cell
from leukoscope.cells.locate import CellLocation, locate_cell
from tests.cells.drawing import BACKGROUNDS, drawn_cell


def test_frame_makes_the_cell_the_requested_fraction_of_the_side() -> None:
    image = drawn_cell((300, 300), (120, 170), 150, red_cells=0)
    location = locate_cell(image)
    assert isinstance(location, CellLocation)
    framed = frame_cell(image, location, cell_fraction=0.33)
    assert framed.shape[0] == framed.shape[1] == round(location.diameter / 0.33)
    again = locate_cell(framed)
    assert isinstance(again, CellLocation)
    assert again.diameter / framed.shape[0] == pytest.approx(0.33, rel=0.08)
    assert abs(again.x - framed.shape[1] / 2) < 0.05 * again.diameter
    assert abs(again.y - framed.shape[0] / 2) < 0.05 * again.diameter
    # Where the frame leaves the image it is filled with the background colour.
    assert np.abs(framed[0, 0].astype(int) - BACKGROUNDS["pbc"]).max() <= 12


def test_frame_reflect_pads_with_image_content() -> None:
    image = drawn_cell((120, 120), (60, 60), 72, stain="tecom")
    location = locate_cell(image)
    assert isinstance(location, CellLocation)
    framed = frame_cell(image, location, pad="reflect")
    side = round(location.diameter / DEFAULT_CELL_FRACTION)
    assert framed.shape == (side, side, 3)
    with pytest.raises(ValueError, match="cell_fraction"):
        frame_cell(image, location, cell_fraction=0)
