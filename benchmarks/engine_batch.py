"""How many images an engine should compute in one call (``ENGINE_BATCH``).

The predictor decodes 64 files at a time; the engine may compute them in smaller calls
(:func:`leukoscope.inference.runtime.in_batches`). For each model, this loads it once per
``--sizes`` value (``leukoscope.inference.runtime.ENGINE_BATCH`` set before the load) and runs
``predict_paths`` over its whole test split in a running process (as
``benchmarks/inference.py``'s *pipeline*: no start-up, the sample scale measured beforehand),
the sizes taking turns ``--turns`` times, so that other work on a shared machine falls on
every size alike. Reports the median images/s of each size, every turn, and in how many turns
each size was the fastest.

Run: .venv/bin/python benchmarks/engine_batch.py [--models models/a models/b ...]
       [--sizes 16,64] [--turns 8] [--out benchmarks/results/engine-batch.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from inference import released_models, test_files
from results_file import write_results

import leukoscope.inference.runtime as runtime
from leukoscope.inference.predictor import Predictor


def turns(model: Path, sizes: list[int], n_turns: int) -> dict[str, Any]:
    """images/s of ``predict_paths`` over ``model``'s test split with each engine batch size,
    the sizes in turns."""
    paths, _ = test_files(model, 0)
    predictors = {}
    for size in sizes:
        runtime.ENGINE_BATCH = size
        predictors[size] = Predictor.load(model)
    scale = predictors[sizes[0]].estimate_scale(paths)
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for predictor in predictors.values():
        predictor.predict_paths(paths[:64], scale=scale)
    for _ in range(n_turns):
        for size, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict_paths(paths, scale=scale)
            rates[size].append(len(paths) / (time.perf_counter() - start))
    fastest = [max(sizes, key=lambda s: rates[s][turn]) for turn in range(n_turns)]
    first = predictors[sizes[0]]
    return {
        "engine": first.backend,
        "precision": first.precision,
        "test_images": len(paths),
        "sizes": {
            str(size): {
                "median_images_per_s": round(statistics.median(rates[size]), 1),
                "turns_images_per_s": [round(rate, 1) for rate in rates[size]],
                "fastest_turns": fastest.count(size),
            }
            for size in sizes
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", type=Path, nargs="+", help="model folders (default: all)")
    parser.add_argument("--sizes", default=f"{runtime.ENGINE_BATCH},64")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-batch.json"))
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    load_before = os.getloadavg()
    results = {}
    for model in args.models or released_models():
        results[model.name] = turns(model, sizes, args.turns)
        for size, entry in results[model.name]["sizes"].items():
            print(f"{model.name:28s} {size:>4s}: {entry['median_images_per_s']:7.1f} images/s")
    write_results(
        args.out,
        "engine_batch",
        unit="images/s (predict_paths in a running process)",
        data="test split of each model's manifest (runs/manifests/<wbc5|pbc8>-seed0.csv)",
        load_average={"before": load_before, "after": os.getloadavg()},
        results=results,
    )


if __name__ == "__main__":
    main()
