"""Grad-CAM overlays of a batch of image files, one PNG per readable image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError
from leukoscope.inference.explain import gradcam_overlay, save_png

if TYPE_CHECKING:
    from leukoscope.inference.predictor import Predictor


def write_overlays(
    predictor: Predictor,
    paths: Sequence[Path],
    out: Path,
    *,
    target: str | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[Path], list[str]]:
    """Write ``<name>_gradcam.png`` for each image into ``out``.

    Parameters
    ----------
    predictor
        A PyTorch predictor (Grad-CAM needs the gradients).
    paths
        Image files; an unreadable one is skipped, never the batch.
    target
        Class to explain; None explains each image's predicted class.
    advance
        Called with 1 after each image.

    Returns
    -------
    written, errors
        The PNGs written (``name_2``, ``name_3``... when images of different folders share a
        name), and one message per unreadable file.
    """
    used: set[str] = set()
    written: list[Path] = []
    errors: list[str] = []
    for path in paths:
        try:
            image = decode_rgb(path)
        except ImageDecodeError as exc:
            errors.append(str(exc))
        else:
            png = out / f"{_unique(f'{path.stem}_gradcam', used)}.png"
            save_png(gradcam_overlay(predictor, image, target), png)
            written.append(png)
        if advance is not None:
            advance(1)
    return written, errors


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when images from different folders share it."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate
