from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.datasets import Sample
from leukoscope.data.preprocess import Preprocessing
from leukoscope.training.cache import build_image_cache, cached_array
from tests.training.conftest import shape_image


def test_cached_array_is_committed_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"

    def failing(array: np.ndarray) -> dict[str, object]:
        array[0] = 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_array(path, (2, 3), np.float16, failing)
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == []

    calls = []

    def fill(array: np.ndarray) -> dict[str, object]:
        calls.append(1)
        array[:] = 7
        return {"note": "done"}

    _, meta = cached_array(path, (2, 3), np.float16, fill)
    again, meta_again = cached_array(path, (2, 3), np.float16, fill)
    assert len(calls) == 1
    assert meta == meta_again == {"note": "done"}
    assert np.all(again == 7) and again.dtype == np.float16


def _slow_fill(array: np.ndarray) -> dict[str, object]:
    with open(array.filename.parent / "fills.log", "a") as log:  # type: ignore[union-attr]
        log.write("fill\n")
    time.sleep(0.5)
    array[:] = 3
    return {}


def _build(path: Path) -> float:
    array, _ = cached_array(path, (4, 4), np.uint8, _slow_fill)
    return float(array.sum())


def test_concurrent_builds_share_one_array(tmp_path: Path) -> None:
    """Two runs that start on the same split at once (two archs trained side by side) must
    not remove each other's half-built array: the second waits and maps the first's."""
    path = tmp_path / "shared.npy"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        sums = pool.map(_build, [path, path])
    assert sums == [48.0, 48.0]
    assert (tmp_path / "fills.log").read_text() == "fill\n"


def test_image_cache_resizes_and_lists_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    shape_image(0, 0, size=40).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples = [Sample(good, 0), Sample(bad, 1), Sample(good, 2)]
    preprocessing = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cache = build_image_cache(samples, preprocessing, "test-key", workers=0)
    assert cache.images.shape == (3, 3, 32, 32) and cache.images.dtype == np.uint8
    assert cache.rows.tolist() == [0, 2]
    assert cache.labels.tolist() == [0, 2]
    assert [path for path, _ in cache.skipped] == [str(bad)]
    assert np.array_equal(cache.images[0], cache.images[2]) and cache.images[0].any()
