from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.batches import pixel_batches
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import Preprocessing, decode_pixels, to_pixels
from leukoscope.errors import ImageDecodeError
from tests.conftest import cell_image

CONFIG = Preprocessing(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_keep_input_order_and_name_bad_files(tmp_path: Path, workers: int) -> None:
    paths = []
    for i in range(9):
        path = tmp_path / f"{i}.jpg"
        if i in (3, 7):
            path.write_bytes(b"not an image")
        else:
            cell_image(i, size=40).save(path)
        paths.append(path)
    batches = list(pixel_batches(paths, CONFIG, batch_size=4, workers=workers, ahead=1))
    assert [len(b.indices) + len(b.errors) for b in batches] == [4, 4, 1]
    assert [i for b in batches for i in b.indices] == [0, 1, 2, 4, 5, 6, 8]
    errors = [e for b in batches for e in b.errors]
    assert [i for i, _ in errors] == [3, 7] and "3.jpg" in errors[0][1]
    first = batches[0]
    assert first.pixels.shape == (3, 24, 24, 3) and first.pixels.dtype == np.uint8
    expected = to_pixels(decode_rgb(paths[0], draft_size=CONFIG.draft_size), CONFIG)
    assert np.array_equal(first.pixels[0], expected)


def test_a_batch_of_unreadable_files_has_no_pixels(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    (batch,) = pixel_batches([path], CONFIG, workers=2)
    assert batch.pixels.shape == (0, 24, 24, 3) and batch.indices == []
    with pytest.raises(ImageDecodeError, match=r"empty\.png"):
        decode_pixels(path, CONFIG)


def test_stopping_early_leaves_no_work_running(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(40)]
    for i, path in enumerate(paths):
        cell_image(i, size=32).save(path)
    batches = pixel_batches(paths, CONFIG, batch_size=2, workers=2)
    assert next(batches).indices == [0, 1]
    batches.close()  # shuts the pool down, cancelling the queued files
