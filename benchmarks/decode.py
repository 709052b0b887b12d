"""Decoding throughput: how fast images go from JPEG on disk to model-ready tensors.

Run: .venv/bin/python benchmarks/decode.py [--data DIR] [--n 600] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from results_file import write_results
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from leukoscope.data import default_dataset_dir
from leukoscope.data.datasets import CellImageDataset, Sample, make_loader, samples_from_folder
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import Preprocessing, create_transform, to_pixels
from leukoscope.machine import describe_machine

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rate(fn: Callable[[Path], object], paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return len(paths) / (time.perf_counter() - start)


def _model_input(image: Image.Image, config: Preprocessing) -> torch.Tensor:
    """Decoded image -> normalised float tensor (3, S, S), as training and prediction make it."""
    pixels = torch.from_numpy(to_pixels(image, config).copy()).permute(2, 0, 1)
    return create_transform(config)(pixels)


def _loader_rate(paths: list[Path], size: int, workers: int, draft: bool) -> float:
    dataset = CellImageDataset(
        [Sample(p, 0) for p in paths],
        partial(_model_input, config=Preprocessing(size, MEAN, STD)),
        draft_size=size if draft else None,
    )
    start = time.perf_counter()
    n = sum(len(batch.labels) for batch in make_loader(dataset, batch_size=64, workers=workers))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=default_dataset_dir())
    parser.add_argument("--n", type=int, default=600, help="images to decode")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    args = parser.parse_args()

    samples, _ = samples_from_folder(args.data)
    step = max(1, len(samples) // args.n)
    paths = [s.path for s in samples[::step][: args.n]]
    for p in paths:  # warm the page cache so we time decoding, not the disk
        p.read_bytes()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = {
        "pil_decode_rgb_1core": _rate(lambda p: decode_rgb(p), paths),
        "pil_decode_rgb_draft112_1core": _rate(lambda p: decode_rgb(p, draft_size=112), paths),
        "torchvision_decode_jpeg_1core": _rate(
            lambda p: decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB), paths
        ),
    }
    torch.set_num_threads(threads)
    workers = describe_machine()["cpu_cores"]
    for size in (224, 112):
        results[f"loader_{size}px_{workers}workers"] = _loader_rate(paths, size, workers, False)
        results[f"loader_{size}px_{workers}workers_draft"] = _loader_rate(
            paths, size, workers, True
        )
    results = {k: round(v, 1) for k, v in results.items()}
    for key, value in results.items():
        print(f"{key:40s} {value:8.1f} images/s")
    write_results(
        args.out,
        "decode",
        unit="images/s",
        results=results,
        n_images=len(paths),
        data=str(args.data),
    )


if __name__ == "__main__":
    main()
