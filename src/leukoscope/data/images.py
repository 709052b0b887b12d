"""Decoding cell images from disk or bytes into RGB, with every failure named.

Microscopes and image archives write JPEG, PNG, TIFF and BMP in RGB, RGBA, palette, grayscale
and 16-bit modes. Models want 8-bit RGB. :func:`decode_rgb` does that conversion in one place,
refuses decompression bombs before decoding pixels, and turns every decoder failure into an
:class:`~leukoscope.errors.ImageDecodeError` that says which file and what is wrong.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leukoscope.errors import ImageDecodeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
)
"""File name endings scanned as images (the format itself is sniffed from the bytes)."""

SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "TIFF", "BMP", "MPO", "WEBP", "GIF"})
"""Pillow format names accepted (MPO is the multi-picture JPEG some cameras write; of an
animated GIF, the first frame is read)."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image accepted (width × height). A cell crop is ~0.13 MP; a whole-slide tile of
6000×6000 still fits. Anything larger is treated as a decompression bomb."""

# Pillow's own bomb check only warns below 2× its limit; we apply ours before decoding instead.
Image.MAX_IMAGE_PIXELS = None


def is_image_name(path: str | Path) -> bool:
    """True for visible files whose name ends in an image extension."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def open_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open ``source`` (a path or raw bytes), check format and size, and return the decoded image.

    Raises :class:`ImageDecodeError` for empty, non-image, unsupported, oversized or truncated
    input. The returned image is fully loaded, in its original mode. ``draft_size`` lets the
    JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding (keeping both sides at least
    ``draft_size``), several times faster for small model inputs.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source if isinstance(source, bytes) else _read_bytes(source)
    if not data:
        raise ImageDecodeError(label, "empty file (0 bytes)", "zero_byte")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            label, "not an image (unrecognised file format)", "non_image"
        ) from None
    except Exception as exc:
        raise ImageDecodeError(label, f"cannot read image header ({exc})") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(label, f"unsupported image format {image.format}", "non_image")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            label,
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb)",
            "too_large",
        )
    if width == 0 or height == 0:
        raise ImageDecodeError(label, f"image has no pixels ({width}x{height})")
    if draft_size is not None and image.format in {"JPEG", "MPO"}:
        image.draft(image.mode, (draft_size, draft_size))
    try:
        image.load()
    except Exception as exc:
        if "truncated" in str(exc).lower():
            raise ImageDecodeError(label, f"truncated image ({exc})", "truncated") from None
        raise ImageDecodeError(label, f"corrupt image data ({exc})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, turned upright by its EXIF orientation.

    16-bit and 32-bit grayscale are rescaled by their actual range, not clipped; transparency is
    composited over white (the colour of an empty smear background in bright-field).

    The turn happens in ``image`` itself (the caller's freshly decoded image), and an RGB image
    is returned as it is, not copied: a copy of every decoded image holds the GIL that the
    decoding threads of :mod:`~leukoscope.data.batches` share.
    """
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        return _rescale_to_8_bit(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


RESCALE_ROWS = 256
"""Rows converted to float at a time when rescaling a 16/32-bit image."""


def _rescale_to_8_bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit grayscale image as 8-bit, its actual range spread over 0-255.

    The pixels are read in their own type (2 or 4 bytes each) and converted to float32 a block
    of rows at a time: whole-image float64 copies took about 1 GB for one 6300x6300 16-bit PNG.
    """
    lo, hi = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
    pixels = np.asarray(image)
    out = np.zeros(pixels.shape, dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for start in range(0, pixels.shape[0], RESCALE_ROWS):
            block = pixels[start : start + RESCALE_ROWS].astype(np.float32)
            out[start : start + RESCALE_ROWS] = np.rint((block - lo) * scale)
    return Image.fromarray(out)


def decode_rgb(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` to an 8-bit RGB image (see :func:`open_image` for the checks)."""
    image = open_image(source, name=name, max_pixels=max_pixels, draft_size=draft_size)
    try:
        return to_rgb(image)
    except Exception as exc:
        label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
        raise ImageDecodeError(label, f"cannot convert {image.mode} image to RGB ({exc})") from None


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from None
