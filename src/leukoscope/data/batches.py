"""Image files decoded into batches of model pixels in threads, without torch.

Prediction decodes each file (:func:`~leukoscope.data.preprocess.decode_pixels`) while the
model runs on the previous batch. Threads do this as well as processes here: Pillow releases
the GIL while it decodes a JPEG and while it resizes, which is nearly all of the work, and
threads start at once and hand pixels over without copying them between processes
(``benchmarks/inference.py`` compares both).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukoscope.data.preprocess import Preprocessing, decode_pixels
from leukoscope.errors import ImageDecodeError

Decoded = tuple[np.ndarray, str | None] | str
"""A file's pixels and note, or why it could not be read."""


@dataclass
class PixelBatch:
    """The readable files of one batch: their uint8 pixels (N, H, W, 3) and positions in the
    input; ``errors`` lists ``(position, message)`` of the unreadable ones, ``notes`` maps a
    position to the preprocessing note on its image."""

    pixels: np.ndarray
    indices: list[int]
    errors: list[tuple[int, str]] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)


def _decode(path: str | Path, config: Preprocessing, factor: float) -> Decoded:
    try:
        return decode_pixels(path, config, factor)
    except ImageDecodeError as exc:
        return str(exc)


def _collate(start: int, decoded: Sequence[Decoded], config: Preprocessing) -> PixelBatch:
    size = config.input_size
    batch = PixelBatch(np.empty((0, size, size, 3), np.uint8), [])
    images = []
    for index, item in enumerate(decoded, start):
        if isinstance(item, str):
            batch.errors.append((index, item))
            continue
        pixels, note = item
        images.append(pixels)
        batch.indices.append(index)
        if note is not None:
            batch.notes[index] = note
    if images:
        batch.pixels = np.stack(images)
    return batch


def pixel_batches(
    paths: Sequence[str | Path],
    config: Preprocessing,
    *,
    batch_size: int = 64,
    workers: int = 2,
    ahead: int = 2,
    factor: float = 1.0,
) -> Iterator[PixelBatch]:
    """Batches of ``batch_size`` files in input order, decoded by ``workers`` threads (none:
    in the caller's thread) up to ``ahead`` batches before the one the caller works on, each
    image rescaled by its sample's ``factor`` (see :class:`~.preprocess.ScaleEstimate`).

    A file that cannot be read becomes an error entry of its batch, never an exception.
    """
    starts = range(0, len(paths), batch_size)
    if workers == 0:
        for start in starts:
            chunk = paths[start : start + batch_size]
            yield _collate(start, [_decode(p, config, factor) for p in chunk], config)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="leukoscope-decode")
    queued: deque[tuple[int, list[Future[Decoded]]]] = deque()
    try:
        for start in starts:
            chunk = paths[start : start + batch_size]
            queued.append((start, [pool.submit(_decode, p, config, factor) for p in chunk]))
            if len(queued) > ahead:
                first, futures = queued.popleft()
                yield _collate(first, [f.result() for f in futures], config)
        while queued:
            first, futures = queued.popleft()
            yield _collate(first, [f.result() for f in futures], config)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
