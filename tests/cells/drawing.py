"""Drawn smears for the locator tests: red cells and white cells of known place and size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = {"pbc": (236, 218, 206), "tecom": (235, 232, 150), "blue": (215, 222, 240)}
CYTOPLASM = {"pbc": (200, 180, 215), "tecom": (185, 150, 110), "blue": (175, 180, 220)}
NUCLEUS = {"pbc": (95, 50, 140), "tecom": (120, 60, 50), "blue": (70, 60, 150)}
RED_CELL = (225, 170, 175)
RED_CELL_CENTRE = (232, 196, 196)


def smear(
    size: tuple[int, int],
    white_cells: Sequence[tuple[float, float, float]],
    stain: str = "pbc",
    red_cells: int = 8,
    red_diameter: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A background with ``red_cells`` red cells (pale centre) clear of the white cells, each
    white cell ``(x, y, diameter)`` a cytoplasm disc with a nucleus of 0.6 its diameter, plus
    camera noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, BACKGROUNDS[stain])
    draw = ImageDraw.Draw(image)
    red_radius = (red_diameter or 0.9 * min(d for _, _, d in white_cells)) / 2
    for _ in range(red_cells):
        for _attempt in range(100):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            if all(np.hypot(x - cx, y - cy) > d / 2 + red_radius + 4 for cx, cy, d in white_cells):
                break
        draw.ellipse((x - red_radius, y - red_radius, x + red_radius, y + red_radius), RED_CELL)
        r = 0.4 * red_radius
        draw.ellipse((x - r, y - r, x + r, y + r), RED_CELL_CENTRE)
    for x, y, diameter in white_cells:
        radius = diameter / 2
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), CYTOPLASM[stain])
    for x, y, diameter in white_cells:
        r = 0.3 * diameter
        draw.ellipse((x - r, y - r + 2, x + r, y + r - 2), NUCLEUS[stain])
    noisy = np.asarray(image, dtype=float) + rng.normal(0, 4, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def drawn_cell(
    size: tuple[int, int],
    centre: tuple[float, float],
    diameter: float,
    stain: str = "pbc",
    red_cells: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """A single-cell image: one white cell of known centre and diameter among red cells about
    0.45 of its diameter."""
    return smear(
        size, [(*centre, diameter)], stain, red_cells, red_diameter=0.45 * diameter, seed=seed
    )
