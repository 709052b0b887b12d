"""The single-cell locator on drawn cells, blank fields and noise, and against experts' masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukoscope.cells.locate import CellLocation, NoCell, locate_cell
from tests.cells.drawing import drawn_cell
from tests.conftest import PBC_ROOT

EXTERNAL = PBC_ROOT.parent / "external"


@pytest.mark.parametrize(
    ("size", "centre", "diameter", "stain"),
    [
        ((360, 363), (180, 181), 120, "pbc"),
        ((360, 363), (150, 210), 100, "blue"),
        ((300, 300), (150, 150), 150, "pbc"),
        ((120, 120), (60, 60), 72, "tecom"),
        ((640, 480), (400, 200), 140, "pbc"),
    ],
)
def test_drawn_cell_is_found_at_its_place_and_size(
    size: tuple[int, int], centre: tuple[float, float], diameter: float, stain: str
) -> None:
    location = locate_cell(drawn_cell(size, centre, diameter, stain))
    assert isinstance(location, CellLocation), location
    assert np.hypot(location.x - centre[0], location.y - centre[1]) < 0.05 * diameter
    assert location.diameter == pytest.approx(diameter, rel=0.08)
    x_min, y_min, x_max, y_max = location.box
    assert x_min < centre[0] < x_max and y_min < centre[1] < y_max
    assert location.mask.shape == (size[1], size[0])
    assert 0 < location.score <= 1


@pytest.mark.parametrize(
    "image",
    [
        np.full((360, 360, 3), 230, np.uint8),
        np.full((120, 200, 3), (235, 232, 150), np.uint8),
        np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8),
        np.clip(np.random.default_rng(1).normal(220, 25, (360, 363, 3)), 0, 255).astype(np.uint8),
    ],
    ids=["grey", "yellow", "uniform-noise", "gaussian-noise"],
)
def test_blank_or_noise_gives_no_cell_with_a_reason(image: np.ndarray) -> None:
    result = locate_cell(image)
    assert isinstance(result, NoCell)
    assert result.reason


def test_a_speck_is_not_a_white_cell() -> None:
    image = drawn_cell((360, 360), (180, 180), 24, red_cells=0)
    result = locate_cell(image)
    assert isinstance(result, NoCell)
    assert "speck" in result.reason or "small" in result.reason


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        locate_cell(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize("name", ["zheng2018-cellavision", "zheng2018-tecom"])
def test_agrees_with_experts_masks(name: str) -> None:
    folder = EXTERNAL / name
    if not (folder / "masks").is_dir():
        pytest.skip(f"{folder} not found")
    ious = []
    for path in sorted((folder / "images").glob("*/*.png"))[::25]:
        with Image.open(path) as image:
            location = locate_cell(np.asarray(image.convert("RGB")))
        with Image.open(folder / "masks" / path.name) as mask_image:
            truth = np.asarray(mask_image.convert("L")) > 0
        assert isinstance(location, CellLocation), (path, location)
        ious.append((location.mask & truth).sum() / (location.mask | truth).sum())
    assert np.median(ious) >= 0.75, ious
