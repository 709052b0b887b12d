"""Find every white cell in a field image (a microscope camera's photo of a smear).

The same colour model as the single-cell locator (:mod:`leukoscope.cells.locate`), extended to
many cells: on a downscaled copy, the densely stained regions (well above the median stained
pixel, mostly red cells) are cut at their waists into pieces, a cell is grown from every piece
over the stained pixels that are not red cells, pieces of one cell are joined again where the
neck between them is wide (:func:`join_lobes`; two touching cells meet at a narrow waist), and
a candidate is kept only if it looks like a white cell and not like a red cell, a red-cell
overlap, a platelet or stain debris:

- its nucleus's hue differs from the red cells' (overlapping red cells are dense but red);
- it is at least :data:`MIN_RED_CELL_RATIO` times as wide as the field's red cells (measured on
  the field itself, so the test holds at any magnification), or, with too few red cells to
  measure, at least :data:`MIN_WORK_DIAMETER` pixels wide on the downscaled copy.

A cell whose mask reaches the image's edge is marked ``edge``: it may be cut.

Measured (``benchmarks/locate.py``, IoU 0.5): recall 0.964 and precision 0.907 on 40 synthetic
1920x1080 fields of PBC cells at 0.5-2x magnification with stain shifts (0.969 without the
boxes on the PBC platelet clumps pasted as distractors), 0-9 boxes on fields of red cells only;
recall 0.92 / 0.92 and precision 0.77 / 0.81 on the CellaVision / Tecom single-cell crops used
as fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed

from leukoscope.cells.locate import MIN_NUCLEUS_CONTRAST, grow_cells, stain_levels

FIELD_WORK_SIDE = 640
"""Longest side of the downscaled copy a field is segmented on: a white cell at half PBC's
magnification in a 1920-px field is still about 20 px wide there."""

MIN_RED_CELL_RATIO = 1.1
"""A white cell is at least this many times as wide as the field's red cells as measured here
(their stained area, about 0.9 of their true diameter): a small lymphocyte is 1.2-1.4 of that,
a red cell taken for a cell about one, platelets a third."""

MIN_WORK_DIAMETER = 8.0
"""Smallest white cell, in pixels of the downscaled copy, whatever the red cells' size."""

NECK = 0.8
"""Two neighbouring regions are lobes of one cell when the neck between them is at least this
fraction of the smaller one's inscribed radius."""

STAINED = 0.25
"""Optical density (summed over the channels) above which a pixel counts as stained."""

NUCLEUS_OVER_STAIN = 1.3
"""A nucleus is at least this many times as dense as the median stained pixel (mostly red cells
in a field; in the median image nuclei are 2.3-4 times the median stained density of PBC and the
external sets, even where the white cell itself fills most of the image)."""

MIN_RED_PIXELS = 50
"""Fewest pixels outside every cell from which the red cells' hue is measured."""

PIECE_NECK = 0.5
"""A piece too small for a white cell joins its neighbour when the neck between them is at least
this fraction of its inscribed radius."""

MIN_NUCLEUS_SHARE = 0.08
"""Least share of a white cell's pixels that are nucleus (dense) pixels."""

MIN_HUE_SHIFT = 0.12
"""Least distance (sum of absolute differences) between a nucleus's stain hue and the red
cells' (both unit-sum optical density directions); red cells and their overlaps can be dense but
keep the red cells' hue. With 0.05 instead, fields of red cells only got 3-22 boxes each."""


@dataclass(frozen=True)
class CellBox:
    """One white cell in a field, in pixels of the image given to :func:`locate_cells`.

    Attributes
    ----------
    x_min, y_min, x_max, y_max : int
        The cell's box, maxima exclusive.
    score : float
        Confidence in ``[0, 1]``: the nucleus's contrast against the background times how much
        its hue differs from the red cells', each saturating.
    edge : bool
        The cell reaches the image's edge and may be cut.
    """

    x_min: int
    y_min: int
    x_max: int
    y_max: int
    score: float
    edge: bool


@dataclass(frozen=True)
class FieldLocation:
    """What :func:`locate_field` found in a field.

    Attributes
    ----------
    boxes : list of CellBox
        One box per white cell, best score first.
    red_cell_diameter : float or None
        The median stained diameter of the field's single red cells, in the image's pixels
        (a measure of the microscope's magnification); None with fewer than five of them.
    """

    boxes: list[CellBox]
    red_cell_diameter: float | None


def locate_cells(rgb: np.ndarray) -> list[CellBox]:
    """Find every white cell in a field image.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), uint8
        The field.

    Returns
    -------
    list of CellBox
        One box per white cell found, best score first; empty when there is none.
    """
    return locate_field(rgb).boxes


def locate_field(rgb: np.ndarray) -> FieldLocation:
    """:func:`locate_cells`, with the field's red-cell diameter measured on the way."""
    stain = stain_levels(rgb, FIELD_WORK_SIDE)
    if stain is None:
        return FieldLocation([], None)
    od, density, low, high, scale = stain
    # With few white cells the top Otsu class is the red cells' darker rims: a nucleus is also
    # well above the lightly stained pixels (red cells) in absolute terms.
    high = max(high, NUCLEUS_OVER_STAIN * float(np.median(density[density > STAINED])))
    # Smoothed: a granular nucleus at full resolution would fall apart into specks.
    dense = ndi.gaussian_filter(density, 1.0) > high
    dense = ndi.binary_opening(ndi.binary_closing(dense, disk(1)), disk(1))
    dense = remove_small_objects(dense, max_size=int(MIN_WORK_DIAMETER**2 / 4))
    if not dense.any():
        red_diameter = _red_cell_diameter((density > low) & ~dense)
        return FieldLocation([], None if red_diameter is None else red_diameter * scale)
    # Touching nuclei (two cells pressed together) form one dense component: cut every
    # component at its waists, and let join_lobes put the pieces of one cell together again.
    distance = ndi.distance_transform_edt(dense)
    peaks, _ = ndi.label((distance == ndi.maximum_filter(distance, size=5)) & dense)
    lobes = watershed(-distance, peaks, mask=dense)
    # Lobes a few pixels apart count as one nucleus for how far its cell may reach.
    groups, _ = ndi.label(ndi.binary_closing(dense, disk(3)))
    grown = grow_cells(od, density, low, high, lobes, np.where(dense, groups, 0))
    red_pixels = (density > low) & ~dense & (grown == 0)
    red_diameter = _red_cell_diameter(red_pixels)
    least = MIN_WORK_DIAMETER
    if red_diameter is not None:
        least = max(least, MIN_RED_CELL_RATIO * red_diameter)
    cells = join_lobes(grown, least)
    chroma = od / np.maximum(density, 1e-3)[..., None]
    # The red cells' hue from the stained pixels no cell took; none where there are too few.
    red_hue = np.median(chroma[red_pixels], axis=0) if red_pixels.sum() > MIN_RED_PIXELS else None
    nuclei = np.where(dense, cells, 0)
    boxes = _boxes(cells, nuclei, chroma, density, red_hue, least, scale, rgb.shape[:2])
    return FieldLocation(boxes, None if red_diameter is None else red_diameter * scale)


def join_lobes(regions: np.ndarray, least_diameter: float) -> np.ndarray:
    """Join neighbouring regions that are lobes of one cell rather than two cells touching.

    Each nucleus lobe grew its own region (:func:`~leukoscope.cells.locate.grow_cells`), so two
    touching cells are already apart, but so are a neutrophil's lobes. Two regions are one cell
    when the neck between them (the largest distance to the background along their shared
    border) is at least :data:`NECK` times the smaller one's inscribed radius: lobes share a
    round cell, while two round cells touching meet at a narrow waist. Then a region narrower
    than ``least_diameter`` (too small for a white cell by itself) joins the neighbour it shares
    the widest neck with when that neck is at least :data:`PIECE_NECK` times its own radius.
    """
    count = int(regions.max())
    if count < 2:
        return regions
    distance = ndi.distance_transform_edt(regions > 0)
    peak = np.zeros(count + 1)
    np.maximum.at(peak, regions.ravel(), distance.ravel())
    parent = np.arange(count + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    saddles: dict[tuple[int, int], float] = {}
    for a, b, da, db in (
        (regions[:, :-1], regions[:, 1:], distance[:, :-1], distance[:, 1:]),
        (regions[:-1], regions[1:], distance[:-1], distance[1:]),
    ):
        touching = (a != b) & (a > 0) & (b > 0)
        for i, j, h in zip(a[touching], b[touching], np.minimum(da, db)[touching], strict=True):
            key = (min(i, j), max(i, j))
            saddles[key] = max(saddles.get(key, 0.0), float(h))
    area = np.bincount(regions.ravel(), minlength=count + 1).astype(float)
    least_area = np.pi * least_diameter**2 / 4
    necks = sorted(saddles.items(), key=lambda item: -item[1])
    # Widest necks first, each against the groups joined so far: a small region at the waist
    # between two cells must not chain them into one.
    for small_pieces, ratio in ((False, NECK), (True, PIECE_NECK)):
        for (i, j), height in necks:
            first, second = root(i), root(j)
            if first == second or height < ratio * min(peak[first], peak[second]):
                continue
            if small_pieces and min(area[first], area[second]) >= least_area:
                continue
            parent[first] = second
            peak[second] = max(peak[first], peak[second])
            area[second] += area[first]
    roots = np.array([root(i) for i in range(count + 1)])
    return roots[regions]


def _boxes(
    cells: np.ndarray,
    nuclei: np.ndarray,
    chroma: np.ndarray,
    density: np.ndarray,
    red_hue: np.ndarray | None,
    least: float,
    scale: float,
    shape: tuple[int, int],
) -> list[CellBox]:
    """Boxes of the candidate cells that pass the white-cell tests, at the image's scale."""
    count = int(cells.max())
    index = np.arange(1, count + 1)
    areas = ndi.sum_labels(cells > 0, cells, index)
    nuclei_area = ndi.sum_labels(nuclei > 0, nuclei, index)
    contrast = ndi.sum_labels(density, nuclei, index) / np.maximum(nuclei_area, 1)
    height, width = shape
    small_h, small_w = cells.shape
    boxes = []
    for label, window in enumerate(ndi.find_objects(cells), start=1):
        if window is None:
            continue
        if np.sqrt(4 * areas[label - 1] / np.pi) < least:
            continue
        if nuclei_area[label - 1] < MIN_NUCLEUS_SHARE * areas[label - 1]:
            continue
        if red_hue is None:
            hue_shift = 1.0
        else:
            nucleus_hue = np.median(chroma[nuclei == label], axis=0)
            hue_shift = float(np.abs(nucleus_hue - red_hue).sum())
            if hue_shift < MIN_HUE_SHIFT:
                continue
        ys, xs = window
        edge = ys.start == 0 or xs.start == 0 or ys.stop == small_h or xs.stop == small_w
        score = min(1.0, contrast[label - 1] / (2 * MIN_NUCLEUS_CONTRAST))
        score *= min(1.0, hue_shift / (2 * MIN_HUE_SHIFT))
        boxes.append(
            CellBox(
                x_min=max(0, int(np.floor(xs.start * scale))),
                y_min=max(0, int(np.floor(ys.start * scale))),
                x_max=min(width, int(np.ceil(xs.stop * scale))),
                y_max=min(height, int(np.ceil(ys.stop * scale))),
                score=round(float(score), 4),
                edge=bool(edge),
            )
        )
    return sorted(boxes, key=lambda b: -b.score)


def _red_cell_diameter(red_pixels: np.ndarray) -> float | None:
    """Median diameter of the field's red cells (each the circle with a stained component's
    area, single components only: between a quarter and four times the median area), or None
    with fewer than five of them."""
    filled = ndi.binary_fill_holes(ndi.binary_opening(red_pixels, disk(1)))
    labels, count = ndi.label(filled)
    if count < 5:
        return None
    areas = ndi.sum_labels(filled, labels, np.arange(1, count + 1))
    middle = np.median(areas)
    single = areas[(areas > middle / 4) & (areas < 4 * middle)]
    if len(single) < 5:
        return None
    return float(np.sqrt(4 * np.median(single) / np.pi))
