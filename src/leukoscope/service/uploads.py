"""Turning multipart uploads into decoded images, or into a reason and a status code.

The image type is sniffed from the bytes (``decode_rgb``), never taken from the name; the name
a client sends is kept only as text to show, stripped of any folders.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath

from fastapi import UploadFile
from PIL import Image

from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError
from leukoscope.service.schemas import RejectedFile

PROBLEM_STATUS = {
    "zero_byte": 400,
    "non_image": 415,
    "too_large": 413,
    "truncated": 422,
    "unreadable": 422,
}
"""HTTP status for each kind of ImageDecodeError."""


MAX_CONCURRENT_DECODES = 2
"""Uploads decoded at once, whatever the number of requests. Decoding a large image takes
its own transient buffers besides the pixels (a 6300x6300 16-bit PNG decoded to RGB peaks at
several hundred MB); the server's thread pool would otherwise decode 40 at once. Two keep
both cores of a small lab machine busy."""

_decoding = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


def decode_bounded(data: bytes, *, name: str, max_pixels: int) -> Image.Image:
    """``decode_rgb``, waiting while MAX_CONCURRENT_DECODES others decode."""
    with _decoding:
        return decode_rgb(data, name=name, max_pixels=max_pixels)


@dataclass(frozen=True)
class Upload:
    """A usable uploaded image: its display name, the bytes as sent, and what decoding found.
    The decoded pixels travel beside it (see :func:`read_upload`) so they can be let go of as
    soon as the model has seen them."""

    name: str
    data: bytes
    image_format: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def display_name(raw: str | None, index: int) -> str:
    """The file's own name without folders or control characters, for people to read."""
    base = PurePosixPath((raw or "").replace("\\", "/")).name
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:255] if cleaned.strip(".") else f"upload-{index + 1}"


def read_upload(
    upload: UploadFile, index: int, *, max_bytes: int, max_pixels: int
) -> tuple[Upload, Image.Image] | RejectedFile:
    """Read and decode one upload to RGB, or say why it cannot be used."""
    name = display_name(upload.filename, index)
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        return RejectedFile(
            name=name, status=413, error=f"file too large: over the limit of {max_bytes:,} bytes"
        )
    try:
        image = decode_bounded(data, name=name, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        status = PROBLEM_STATUS[exc.kind]
        return RejectedFile(name=name, status=status, error=exc.reason)
    image_format = Image.open(io.BytesIO(data)).format or "UNKNOWN"
    return Upload(name, data, image_format, image.width, image.height), image
