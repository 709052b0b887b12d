"""Synthetic field images with white cells at known places, for testing the field locator.

Labs photograph whole fields rather than single cells, and no field images with marked white
cells are at hand. :func:`compose_field` builds them from single-cell images: a background
tiled from the strips of single-cell images above and below their white cell (red cells and
platelets only), brought to one background colour,
white cells cut out with :func:`~leukoscope.cells.locate.locate_cell`'s mask pasted at random
places (some touching another, some cut by the image's edge), optional distractors (platelet
clumps) pasted the same way, then the whole field rescaled as another microscope's magnification
would (``scale``) and its stain and background colour shifted in optical density, blurred, with
camera noise. The returned boxes are where the pasted white cells are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

from leukoscope.cells.locate import (
    CellLocation,
    background_colour,
    locate_cell,
    optical_density,
)

MAX_DENSE_SHARE = 0.01
"""Background strips with more nucleus-dense pixels than this share are left out: a platelet
covers about 0.3% of a 360x100 strip, part of a white cell far more."""


@dataclass(frozen=True)
class Cutout:
    """A cell cut from a single-cell image: its pixels and mask, cropped to the mask's box."""

    rgb: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Field:
    """A composed field and the boxes ``(x_min, y_min, x_max, y_max)`` of its white cells, in
    its pixels, with whether each is cut by the image's edge, the boxes of the distractors
    pasted, and which of the white cells given (their index) each box holds."""

    rgb: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    edge: list[bool]
    distractor_boxes: list[tuple[int, int, int, int]]
    cells: list[int] = field(default_factory=list)


def cut_out(rgb: np.ndarray, location: CellLocation) -> Cutout:
    """The located cell's pixels inside its mask (grown by two pixels to keep the outline)."""
    mask = ndi.binary_dilation(location.mask, iterations=2)
    ys, xs = np.nonzero(mask)
    window = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return Cutout(rgb[window].copy(), mask[window].copy())


def background_tiles(
    rgb: np.ndarray, location: CellLocation | None, height: int = 100
) -> list[np.ndarray]:
    """Strips of ``rgb``, full width and ``height`` rows, above and below its white cell's mask
    (grown by 6 pixels) that hold none of it, nor much nucleus-dense stain (part of another
    white cell): red cells and platelets only."""
    if location is None:
        return []
    density = optical_density(rgb.astype(np.float32)).sum(axis=2)
    dense = density > threshold_multiotsu(density, classes=3, nbins=64)[1]
    rows = np.nonzero(ndi.binary_dilation(location.mask, iterations=6).any(axis=1))[0]
    starts = []
    if rows.min() >= height:
        starts.append(rows.min() - height)
    if rgb.shape[0] - rows.max() - 1 >= height:
        starts.append(rows.max() + 1)
    return [
        rgb[y : y + height].copy() for y in starts if dense[y : y + height].mean() < MAX_DENSE_SHARE
    ]


def rebackground(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``rgb`` with its own background colour replaced by ``background`` (stain kept as optical
    density), so tiles from different images join without seams of background colour."""
    own = background_colour(rgb)
    return np.clip(background * rgb / np.maximum(own, 1.0), 0, 255).astype(np.uint8)


def cutouts(images: Sequence[np.ndarray]) -> list[Cutout]:
    """The located cell of each image (images where none is found are skipped)."""
    found = ((rgb, locate_cell(rgb)) for rgb in images)
    return [cut_out(rgb, loc) for rgb, loc in found if isinstance(loc, CellLocation)]


def _paste(canvas: np.ndarray, cut: Cutout, x0: int, y0: int) -> tuple[int, int, int, int] | None:
    """Paste ``cut`` with its top-left corner at (x0, y0), clipped; returns the clipped box of
    its mask, or None when nothing of it lands inside."""
    height, width = canvas.shape[:2]
    h, w = cut.mask.shape
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(width, x0 + w), min(height, y0 + h)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    mask = cut.mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)[..., None]
    region = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    pixels = cut.rgb[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(np.float32)
    canvas[cy0:cy1, cx0:cx1] = (alpha * pixels + (1 - alpha) * region).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return (
        cx0 + int(xs.min()),
        cy0 + int(ys.min()),
        cx0 + int(xs.max()) + 1,
        cy0 + int(ys.max()) + 1,
    )


def _place(
    rng: np.random.Generator,
    size: tuple[int, int],
    shape: tuple[int, int],
    taken: list[tuple[int, int, int, int]],
    touching: bool,
    at_edge: bool,
) -> tuple[int, int] | None:
    """A top-left corner for a cutout of ``shape``: clear of the boxes ``taken``, or touching
    the last one, or hanging over the image's edge."""
    width, height = size
    h, w = shape
    for _ in range(200):
        if touching and taken:
            bx0, by0, bx1, by1 = taken[-1]
            angle = rng.uniform(0, 2 * np.pi)
            reach = 0.5 * ((bx1 - bx0) + w) * 0.9
            cx = (bx0 + bx1) / 2 + reach * np.cos(angle)
            cy = (by0 + by1) / 2 + reach * np.sin(angle)
            x0, y0 = int(cx - w / 2), int(cy - h / 2)
            if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
                continue
            others = taken[:-1]
        elif at_edge:
            side = rng.integers(4)
            x0 = int(rng.uniform(0, width - w))
            y0 = int(rng.uniform(0, height - h))
            cut = rng.uniform(0.2, 0.45)
            if side == 0:
                x0 = -int(cut * w)
            elif side == 1:
                x0 = width - int((1 - cut) * w)
            elif side == 2:
                y0 = -int(cut * h)
            else:
                y0 = height - int((1 - cut) * h)
            others = taken
        else:
            x0 = int(rng.uniform(0, width - w))
            y0 = int(rng.uniform(0, height - h))
            others = taken
        margin = 4
        if all(
            x0 + w + margin <= a or b + margin <= x0 or y0 + h + margin <= c or d + margin <= y0
            for a, c, b, d in others
        ):
            return x0, y0
    return None


def shift_stain(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Rescale each channel's optical density and tint the background, as another stain and
    camera would: ``strength`` 0 leaves the image as is, 1 is a large shift."""
    background = background_colour(rgb)
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / background)
    gains = np.exp(rng.uniform(-0.35, 0.35, 3) * strength)
    tint = np.clip(background * np.exp(rng.uniform(-0.12, 0.12, 3) * strength), 120, 255)
    return np.clip(tint * np.exp(-od * gains), 0, 255).astype(np.uint8)


def compose_field(
    white_cells: Sequence[Cutout],
    tiles: Sequence[np.ndarray],
    rng: np.random.Generator,
    size: tuple[int, int] = (1920, 1080),
    scale: float = 1.0,
    cells: int = 6,
    touching: int = 1,
    at_edge: int = 1,
    distractors: Sequence[Cutout] = (),
    stain_shift: float = 0.0,
    blur: float = 0.0,
    noise: float = 2.0,
    jpeg_quality: int | None = None,
) -> Field:
    """A field of ``size`` (width, height) with ``cells`` white cells on a red-cell background.

    Parameters
    ----------
    white_cells, distractors : sequence of Cutout
        Cells drawn at random (without replacement where possible) to paste; distractors
        (platelets, debris) are pasted clear of the white cells and are not in the boxes.
    tiles : sequence of ndarray
        Background tiles of one size (see :func:`background_tiles`), at the cut-outs'
        magnification; they are brought to the first one's background colour.
    rng : numpy Generator
    size : (int, int)
        The returned image's width and height.
    scale : float
        Magnification relative to the cut-outs' (0.5 makes every cell half as wide).
    cells, touching, at_edge : int
        White cells in all, how many of them touch the cell placed before, how many hang over
        the image's edge.
    stain_shift, blur, noise : float
        Strength of :func:`shift_stain`, Gaussian blur sigma and camera noise (grey levels), in
        the returned image's pixels.
    jpeg_quality : int or None
        Round-trip through JPEG at that quality.

    Returns
    -------
    Field
    """
    width, height = size
    canvas_size = (int(np.ceil(width / scale)), int(np.ceil(height / scale)))
    canvas = _tiled(tiles, canvas_size, rng)
    boxes: list[tuple[int, int, int, int]] = []
    edge: list[bool] = []
    pasted: list[int] = []
    order = rng.permutation(len(white_cells))
    for k in range(cells):
        index = int(order[k % len(order)])
        cut = white_cells[index]
        if rng.random() < 0.5:
            cut = Cutout(cut.rgb[:, ::-1].copy(), cut.mask[:, ::-1].copy())
        is_touching = 0 < k <= touching
        is_edge = touching < k <= touching + at_edge
        corner = _place(rng, canvas_size, cut.mask.shape, boxes, is_touching, is_edge)
        if corner is None:
            continue
        box = _paste(canvas, cut, *corner)
        if box is not None:
            h, w = cut.mask.shape
            x0, y0 = corner
            boxes.append(box)
            pasted.append(index)
            edge.append(x0 < 0 or y0 < 0 or x0 + w > canvas_size[0] or y0 + h > canvas_size[1])
    distractor_boxes: list[tuple[int, int, int, int]] = []
    for cut in (distractors[i] for i in rng.permutation(len(distractors))):
        corner = _place(rng, canvas_size, cut.mask.shape, boxes + distractor_boxes, False, False)
        if corner is not None and (box := _paste(canvas, cut, *corner)) is not None:
            distractor_boxes.append(box)
    image = Image.fromarray(canvas).resize(size, Image.Resampling.LANCZOS)
    factor = (width / canvas_size[0], height / canvas_size[1])

    def scaled(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = box
        return (
            round(x0 * factor[0]),
            round(y0 * factor[1]),
            round(x1 * factor[0]),
            round(y1 * factor[1]),
        )

    rgb = np.asarray(image)
    if stain_shift:
        rgb = shift_stain(rgb, rng, stain_shift)
    if blur:
        rgb = ndi.gaussian_filter(rgb.astype(np.float32), (blur, blur, 0))
    rgb = np.clip(np.asarray(rgb, np.float32) + rng.normal(0, noise, rgb.shape), 0, 255)
    rgb = rgb.astype(np.uint8)
    if jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=jpeg_quality)
        rgb = np.asarray(Image.open(buffer).convert("RGB"))
    return Field(
        rgb, [scaled(b) for b in boxes], edge, [scaled(b) for b in distractor_boxes], pasted
    )


def _tiled(
    tiles: Sequence[np.ndarray], size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A canvas of ``size`` (width, height) covered by randomly chosen, randomly flipped tiles."""
    width, height = size
    canvas = np.empty((height, width, 3), np.uint8)
    th, tw = tiles[0].shape[:2]
    background = background_colour(tiles[0])
    for y in range(0, height, th):
        for x in range(0, width, tw):
            tile = rebackground(tiles[int(rng.integers(len(tiles)))], background)
            if rng.random() < 0.5:
                tile = tile[::-1]
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            piece = tile[: min(th, height - y), : min(tw, width - x)]
            canvas[y : y + piece.shape[0], x : x + piece.shape[1]] = piece
    return canvas
