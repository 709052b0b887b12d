"""Frame a located white cell at a fixed scale: the crop around it, and the fill beyond the image.

Labs crop their cell images differently: the cell's diameter is about a third of the image side
in PBC, about half in CellaVision images from other labs and about 0.6 in a tight 120-px crop.
A classifier trained on one framing sees the others as a different magnification.
:func:`frame_cell` crops a square around a cell that
:func:`~leukoscope.cells.locate.locate_cell` found, whose side is the cell's diameter divided by
a fixed ``cell_fraction``, so every source reaches the model with the cell at the same relative
size.

Only NumPy here, apart from the locator's result type: the preprocessing of every prediction
imports this module, while SciPy and scikit-image, which the locator needs, take about 0.6 s to
import on two cores and are needed only where cells are located (``benchmarks/inference.py``:
one-image ``predict``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from leukoscope.cells.locate import CellLocation

DEFAULT_CELL_FRACTION = 0.37
"""Cell diameter / frame side that :func:`frame_cell` produces by default: PBC's median, so PBC
images are nearly unchanged by framing (0.371 over 200 images of each white-cell class; per
class from 0.28 for erythroblasts and 0.30 for lymphocytes to 0.46 for monocytes;
``benchmarks/locate.py``)."""

PadMode = Literal["border", "reflect"]
"""How :func:`frame_cell` fills the frame outside the image."""


def frame_cell(
    rgb: np.ndarray,
    location: CellLocation,
    cell_fraction: float = DEFAULT_CELL_FRACTION,
    pad: PadMode = "border",
) -> np.ndarray:
    """A square crop centred on the cell, whose side is ``location.diameter / cell_fraction``.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), uint8
        The image the location was found in.
    location : CellLocation
        From :func:`locate_cell`.
    cell_fraction : float
        The cell's diameter as a fraction of the crop's side.
    pad : {"border", "reflect"}
        How the crop is filled where it leaves the image: with the median colour of the image's
        border pixels (its background), or by mirroring the image.

    Returns
    -------
    ndarray of shape (S, S, 3), uint8
        The framed cell at the source's resolution.
    """
    if not 0 < cell_fraction <= 1:
        raise ValueError(f"cell_fraction must be in (0, 1], got {cell_fraction}")
    side = max(1, round(location.diameter / cell_fraction))
    return crop(rgb, round(location.x - side / 2), round(location.y - side / 2), side, side, pad)


def crop(
    rgb: np.ndarray,
    x0: int,
    y0: int,
    width: int,
    height: int,
    pad: PadMode,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """The ``width`` x ``height`` window of ``rgb`` whose top-left corner is at ``(x0, y0)``,
    filled where it leaves the image as ``pad`` says (see :func:`frame_cell`); ``"border"``
    fills with ``fill`` when given (a field's background colour: its border may be red cells).

    >>> crop(np.zeros((4, 4, 3), np.uint8), -1, 0, 6, 2, "border").shape
    (2, 6, 3)
    """
    rows, columns = rgb.shape[:2]
    before_y, before_x = max(0, -y0), max(0, -x0)
    after_y, after_x = max(0, y0 + height - rows), max(0, x0 + width - columns)
    inside = rgb[max(0, y0) : min(rows, y0 + height), max(0, x0) : min(columns, x0 + width)]
    widths = ((before_y, after_y), (before_x, after_x), (0, 0))
    if pad == "reflect":
        return np.pad(inside, widths, mode="reflect")
    if fill is None:
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        fill = np.median(border, axis=0)
    out = np.empty((height, width, 3), dtype=rgb.dtype)
    out[...] = np.asarray(fill).astype(rgb.dtype)
    out[before_y : before_y + inside.shape[0], before_x : before_x + inside.shape[1]] = inside
    return out
