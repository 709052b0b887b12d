"""The field locator on drawn smears and on a field composed from real PBC cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.cells import synthetic
from leukoscope.cells.fields import CellBox, join_lobes, locate_cells
from leukoscope.cells.locate import CellLocation, locate_cell
from tests.cells.drawing import smear


def iou(box: CellBox, truth: tuple[float, float, float, float]) -> float:
    x0, y0, x1, y1 = truth
    w = max(0.0, min(box.x_max, x1) - max(box.x_min, x0))
    h = max(0.0, min(box.y_max, y1) - max(box.y_min, y0))
    inter = w * h
    area = (box.x_max - box.x_min) * (box.y_max - box.y_min) + (x1 - x0) * (y1 - y0)
    return inter / (area - inter)


def circle_box(x: float, y: float, d: float) -> tuple[float, float, float, float]:
    return (x - d / 2, y - d / 2, x + d / 2, y + d / 2)


@pytest.mark.parametrize("stain", ["pbc", "blue", "tecom"])
def test_every_drawn_white_cell_is_found_once(stain: str) -> None:
    cells = [(200, 150, 90), (520, 300, 110), (860, 420, 80)]
    found = locate_cells(smear((1000, 560), cells, stain, red_cells=40, red_diameter=60))
    assert len(found) == len(cells), found
    for x, y, d in cells:
        assert max(iou(box, circle_box(x, y, d)) for box in found) >= 0.6
    assert not any(box.edge for box in found)
    assert all(0 < box.score <= 1 for box in found)


def test_touching_cells_are_two_and_a_cut_cell_is_marked() -> None:
    cells = [(300, 250, 100), (393, 250, 100), (20, 420, 100)]
    found = locate_cells(smear((800, 500), cells, red_cells=25, red_diameter=60))
    assert len(found) == 3, found
    for x, y, d in cells[:2]:
        assert max(iou(box, circle_box(x, y, d)) for box in found) >= 0.5
    edge = [box for box in found if box.edge]
    assert len(edge) == 1 and edge[0].x_min == 0


def test_red_cells_alone_blank_and_noise_give_no_box() -> None:
    only_red = smear((640, 480), [(-500, -500, 60)], red_cells=60, red_diameter=60)
    assert locate_cells(only_red) == []
    assert locate_cells(np.full((480, 640, 3), 225, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert locate_cells(noise) == []
    with pytest.raises(ValueError, match="RGB"):
        locate_cells(np.zeros((4, 4), np.uint8))


def test_join_lobes_keeps_two_round_cells_apart_and_one_cell_whole() -> None:
    yy, xx = np.mgrid[:100, :200]
    left = np.hypot(xx - 60, yy - 50) < 30
    right = np.hypot(xx - 115, yy - 50) < 30
    touching = np.where(left, 1, np.where(right, 2, 0))
    assert len(np.unique(join_lobes(touching, 10))) == 3  # background and two cells
    lobed = np.where(left & (xx < 60), 1, np.where(left, 2, 0))
    assert len(np.unique(join_lobes(lobed, 10))) == 2  # background and one cell


def test_composed_field_of_real_cells(pbc_sample: Path) -> None:
    images = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted(pbc_sample.glob("*/*.jpg"))
        if p.parent.name not in {"platelet"}
    ]
    located = [(rgb, locate_cell(rgb)) for rgb in images]
    found = [(rgb, loc) for rgb, loc in located if isinstance(loc, CellLocation)]
    cells = [synthetic.cut_out(rgb, loc) for rgb, loc in found[::2]]
    tiles = [t[:, :360] for rgb, loc in found[1::2] for t in synthetic.background_tiles(rgb, loc)]
    rng = np.random.default_rng(0)
    field = synthetic.compose_field(cells, tiles, rng, size=(1280, 720), cells=5, stain_shift=0.5)
    assert len(field.boxes) == 5
    boxes = locate_cells(field.rgb)
    matched = sum(max((iou(b, t) for b in boxes), default=0) >= 0.5 for t in field.boxes)
    assert matched >= 4
    assert len(boxes) <= len(field.boxes) + 2
