"""Inference speed: JPEG files on disk to predictions, per architecture and backend.

For each arch (random weights: speed does not depend on them) it measures
- end to end: images/s of ``Predictor.predict_paths`` (decode in worker processes, resize,
  model; batch 64) over ``--n`` JPEGs already in the page cache;
- batch 1: ms per image of ``Predictor.predict_bytes`` (decode, resize, model), p50 and p95;
for PyTorch eager, ONNX Runtime fp32 and, with ``--int8``, ONNX Runtime int8. The compute bound
is the machine's measured fp32 matmul FLOP/s divided by the model's FLOPs per image (counted by
``torch.utils.flop_counter``), in images/s; ``ratio`` = achieved / bound.

Run: python benchmarks/inference.py [--data DIR] [--archs squeezenet1_1,resnet50] [--n 640]
     [--int8] [--workers 2] [--image-size PX] [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_file import write_results
from torch.utils.flop_counter import FlopCounterMode

from leukoscope.data import default_dataset_dir
from leukoscope.data.datasets import samples_from_folder
from leukoscope.inference.export import export_fp32, export_int8
from leukoscope.inference.predictor import Predictor, cpu_cores
from leukoscope.models import ModelCard, create_model, get_config, list_archs, save_model

LATENCY_IMAGES = 60


def matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    """Best sustained fp32 FLOP/s of a large matrix product on all cores."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def model_flops(model: torch.nn.Module, size: int) -> int:
    """FLOPs of one image through the model (a multiply-add counts as 2)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def build(
    arch: str, classes: list[str], root: Path, calibration: Path | None, size: int | None
) -> dict[str, Path]:
    """A random-weight model of ``arch`` at input ``size`` (default: the arch's) and its exports;
    returns backend name -> model path."""
    config = get_config(arch)
    model = create_model(arch, len(classes), weights="none").eval()
    card = ModelCard(arch, tuple(classes), model.head_config, config.preprocessing(size))
    save_model(root, model, card)
    paths = {"torch": root, "onnx-fp32": export_fp32(root, root / "model.onnx")}
    if calibration is not None:
        paths["onnx-int8"] = export_int8(
            root, root / "model.int8.onnx", calibration, images_per_class=8
        )
    return paths


def measure(predictor: Predictor, paths: list[Path], workers: int) -> dict[str, float]:
    """End-to-end images/s at batch 64 and batch-1 latency percentiles."""
    predictor.predict_paths(paths[:64], workers=0)  # warm up kernels and allocator
    start = time.perf_counter()
    predictions = predictor.predict_paths(paths, batch_size=64, workers=workers)
    elapsed = time.perf_counter() - start
    assert not any(p.error for p in predictions)
    data = [p.read_bytes() for p in paths[:LATENCY_IMAGES]]
    times = []
    for i, blob in enumerate(data):
        start = time.perf_counter()
        predictor.predict_bytes(blob, f"{i}.jpg")
        times.append(time.perf_counter() - start)
    return {
        "images_per_s": round(len(paths) / elapsed, 1),
        "batch1_p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
        "batch1_p95_ms": round(1e3 * float(np.percentile(times, 95)), 2),
    }


def calibration_manifest(paths: list[Path], labels: list[str], out: Path) -> Path:
    """A manifest marking the given images as training images (for int8 calibration)."""
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "sha256"])
        writer.writerows(
            [str(p.resolve()), label, "train", ""] for p, label in zip(paths, labels, strict=True)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=default_dataset_dir())
    parser.add_argument("--archs", default=",".join(list_archs()), help="comma-separated")
    parser.add_argument("--n", type=int, default=640, help="images for the end-to-end run")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--int8", action="store_true", help="also benchmark int8 ONNX")
    parser.add_argument("--image-size", type=int, help="input side (default: each arch's own)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    samples, classes = samples_from_folder(args.data)
    step = max(1, len(samples) // args.n)
    chosen = samples[::step][: args.n]
    paths = [s.path for s in chosen]
    for p in paths:  # page cache: time decoding, not the disk
        p.read_bytes()
    load_before = os.getloadavg()[0]
    peak = matmul_flops()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = None
        if args.int8:
            labels = [classes[s.label] for s in chosen]
            manifest = calibration_manifest(paths, labels, Path(tmp) / "calibration.csv")
        for arch in args.archs.split(","):
            model_paths = build(arch, list(classes), Path(tmp) / arch, manifest, args.image_size)
            predictor = Predictor.load(model_paths["torch"], backend="torch")
            flops = model_flops(predictor.model, predictor.input_size)
            bound = peak / flops
            entry: dict[str, Any] = {
                "input_size": predictor.input_size,
                "gflops_per_image": round(flops / 1e9, 3),
                "compute_bound_images_per_s": round(bound, 1),
            }
            for backend, path in model_paths.items():
                engine = "torch" if backend == "torch" else "onnx"
                row = measure(Predictor.load(path, backend=engine), paths, args.workers)
                row["ratio_to_bound"] = round(row["images_per_s"] / bound, 3)
                entry[backend] = row
                print(arch, backend, row, flush=True)
            results[arch] = entry
    write_results(
        args.out,
        "inference",
        data=str(args.data),
        n_images=len(paths),
        batch_size=64,
        decode_workers=args.workers,
        onnxruntime_threads=cpu_cores(),
        matmul_fp32_gflops=round(peak / 1e9, 1),
        load_average_1min={"before": load_before, "after": os.getloadavg()[0]},
        notes="Random weights; uncalibrated models (the abstention score adds one small "
        "matrix product per image). Bound = measured matmul FLOP/s / model FLOPs per image. "
        "A load average above the core count means other processes shared the cores.",
        results=results,
    )


if __name__ == "__main__":
    main()
