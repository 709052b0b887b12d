"""Speed and accuracy of the released models, end to end from JPEG files, per runtime.

For each model of ``--models`` (default: every released model that ships an export), for each
runtime installed (OpenVINO, ONNX Runtime; ``--torch`` adds eager PyTorch) and each precision it
ships (``model.onnx`` fp32, ``model.int8.onnx`` int8; bf16 in OpenVINO on a CPU with AMX for an
fp32 export made with ``export --bf16``), in one run:

- end to end: ``leukoscope predict`` of the model's test-split JPEG files (``--n`` of them, evenly
  spaced through the split: default all; ``--n-views``, default 256, for a model with test-time
  views, which runs several times slower) to a CSV, as a fresh process: start-up, decoding (two
  threads), batch 64 and writing included. Each is run ``--e2e-runs`` times, the runtimes and
  precisions of a model taking turns (a shared machine's speed drifts: turns keep the
  comparison fair), and images/s = files / the median wall time; the accuracy is read back
  from the CSV against the manifest's labels;
- pipeline: images/s of ``Predictor.predict_paths`` on the same files in this process
  (decoding in two threads while the model runs, batch 64, abstention), without the start-up
  and the sample's magnification estimate that a ``predict`` process adds: what a long batch
  job approaches; and the seconds of that estimate (``SCALE_CELLS`` of the files decoded, their
  cells located and classified);
- model only: images/s of the runtime on decoded pixels, batch 64 (``--batches`` calls):
  the bound the pipeline works against, and the share of it reached end to end;
- shares of the decoding bound: end-to-end and pipeline images/s over decoding only (below),
  the measure of issue 13's target for CPUs with AVX-512 or AMX (at least 0.7);
- batch 1: ``Predictor.predict_bytes`` of one JPEG (decode, resize, classify, abstain), p50 and
  p95 over ``--latency`` images;
- decoding only: images/s of decoding and resizing test files to each input size on two threads,
  and on two processes (PyTorch's DataLoader, the decoder before threads) for comparison;
- command-line start-up, ``--runs`` times each: ``leukoscope --help``, a usage error, and
  ``predict`` of one image with each model folder as a user runs it (default options); for a
  model with a fallback, also of the first test image the end-to-end run flagged uncertain,
  which opens the fallback too.

Targets (issue 13, on two cores): ``--help`` under 1 s, one-image ``predict`` under 2 s. The
CPU's instruction sets (AVX2, AVX-512, VNNI, AMX) are recorded with the machine: int8 and the
ranking of the runtimes depend on them.

Run: python benchmarks/inference.py [--models models/a,models/b] [--n 0] [--n-views 256] [--runs 5]
     [--e2e-runs 3] [--torch] [--out benchmarks/results/inference.json]
     python benchmarks/inference.py --table [--out FILE.json]  (Markdown tables from the JSON)
"""

from __future__ import annotations

import argparse
import csv
import faulthandler
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from results_file import write_results

from leukoscope.data.batches import pixel_batches
from leukoscope.data.datasets import Sample, evenly_spaced, make_loader, read_manifest
from leukoscope.data.preprocess import pixels_dataset
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import (
    BF16_ENV,
    BF16_KEY,
    ENGINES,
    INT8_NAME,
    ONNX_NAME,
    PRECISION_KEY,
)
from leukoscope.machine import cpu_cores, describe_machine, has_bf16_matrix_units
from leukoscope.models import load_card

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "leukoscope"]
MANIFESTS = {"wbc5": "runs/manifests/wbc5-seed0.csv", "pbc8": "runs/manifests/pbc8-seed0.csv"}
"""The split each released model was trained on, by the prefix of its name."""
TARGETS_S = {"help": 1.0, "usage_error": 1.0, "predict_one_image": 2.0}
ENGINE_NAMES = {"openvino": "OpenVINO", "onnx": "ONNX Runtime", "torch": "PyTorch eager"}


def released_models() -> list[Path]:
    return sorted(p.parent for p in (REPO / "models").glob(f"*/{ONNX_NAME}"))


def timed(command: list[str], expect_code: int = 0) -> float:
    """Wall seconds from launch to exit of ``command``."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if result.returncode != expect_code:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return elapsed


def medians(command: list[str], runs: int, expect_code: int = 0) -> dict[str, Any]:
    times = [timed(command, expect_code) for _ in range(runs)]
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def end_to_end(
    variants_: list[tuple[str, str, Path]],
    paths: list[Path],
    labels: list[str],
    runs: int,
    tmp: Path,
) -> dict[str, dict[str, Any]]:
    """``leukoscope predict`` of ``paths`` to a CSV with each (backend, precision, export), in
    ``runs`` turns: images/s at the median wall time, and accuracy, by ``backend-precision``."""
    times: dict[str, list[float]] = {f"{b}-{p}": [] for b, p, _ in variants_}
    accuracy: dict[str, tuple[float, int]] = {}
    for _ in range(runs):
        for backend, precision, model in variants_:
            key, out = f"{backend}-{precision}", tmp / "predictions.csv"
            use_precision(precision)
            command = [*CLI, "predict", *map(str, paths), "--model", str(model)]
            times[key].append(timed([*command, "--backend", backend, "--out", str(out)]))
            with out.open(newline="") as handle:
                predicted = {row["source"]: row["label"] for row in csv.DictReader(handle)}
            correct = sum(predicted[str(p)] == y for p, y in zip(paths, labels, strict=True))
            accuracy[key] = (correct / len(paths), len(paths) - correct)
    return {
        key: {
            "images_per_s": round(len(paths) / statistics.median(runs_s), 1),
            "wall_s": round(statistics.median(runs_s), 2),
            "runs_s": [round(t, 2) for t in runs_s],
            "accuracy": round(accuracy[key][0], 4),
            "errors": accuracy[key][1],
        }
        for key, runs_s in times.items()
    }


def pipeline(predictor: Predictor, paths: list[Path]) -> tuple[float, float]:
    """images/s of ``predict_paths`` in this process (after a warm-up batch), at the sample
    scale measured beforehand: no start-up, no scale estimate; and the seconds of that
    estimate, which a ``predict`` process spends before its first batch (timed the second time
    in this process, the locator's imports done)."""
    predictor.estimate_scale(paths)
    start = time.perf_counter()
    scale = predictor.estimate_scale(paths)
    estimate_s = time.perf_counter() - start
    predictor.predict_paths(paths[:64], scale=scale)
    start = time.perf_counter()
    predictor.predict_paths(paths, scale=scale)
    return len(paths) / (time.perf_counter() - start), estimate_s


def model_only(predictor: Predictor, pixels: np.ndarray, batches: int) -> float:
    """images/s of the backend alone on decoded pixels (after one warm-up call)."""
    predictor.run(pixels)
    start = time.perf_counter()
    for _ in range(batches):
        predictor.run(pixels)
    return batches * len(pixels) / (time.perf_counter() - start)


def latency(predictor: Predictor, paths: list[Path]) -> dict[str, float]:
    """Batch 1: decode, resize, classify and abstain on one uploaded JPEG, p50 and p95 in ms."""
    blobs = [p.read_bytes() for p in paths]
    predictor.predict_bytes(blobs[0], "warm-up.jpg")
    times = []
    for i, blob in enumerate(blobs):
        start = time.perf_counter()
        predictor.predict_bytes(blob, f"{i}.jpg")
        times.append(time.perf_counter() - start)
    return {
        "batch1_p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
        "batch1_p95_ms": round(1e3 * float(np.percentile(times, 95)), 2),
    }


def decoding(paths: list[Path], predictor: Predictor, workers: int) -> dict[str, float]:
    """images/s of decoding and resizing to the model's input, in threads and in processes."""
    config = predictor.card.preprocessing
    start = time.perf_counter()
    n = sum(len(b.indices) for b in pixel_batches(paths, config, workers=workers))
    threads = n / (time.perf_counter() - start)
    dataset = pixels_dataset([Sample(p) for p in paths], config)
    start = time.perf_counter()
    n = sum(len(b.indices) for b in make_loader(dataset, batch_size=64, workers=workers))
    processes = n / (time.perf_counter() - start)
    return {
        "threads_images_per_s": round(threads, 1),
        "processes_images_per_s": round(processes, 1),
    }


def stamped(export: Path, key: str) -> str | None:
    """An export's metadata entry ``key`` (None when it has none)."""
    props = onnx.load(str(export), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == key), None)


def variants(model: Path, torch: bool) -> list[tuple[str, str, Path]]:
    """(backend, precision, path to load) of every way the model can run here: ``int8`` or
    ``int8-full`` (8-bit weights) as its int8 export is stamped, and ``bf16`` in OpenVINO for
    an fp32 export stamped for it on a CPU with AMX."""
    found = []
    int8 = model / INT8_NAME
    int8_precision = stamped(int8, PRECISION_KEY) if int8.is_file() else None
    bf16 = stamped(model / ONNX_NAME, BF16_KEY) == "1" and has_bf16_matrix_units()
    for engine in ENGINES:
        try:
            __import__({"onnx": "onnxruntime", "openvino": "openvino"}[engine])
        except ImportError:
            continue
        found.append((engine, "fp32", model / ONNX_NAME))
        if engine == "openvino" and bf16:
            found.append((engine, "bf16", model / ONNX_NAME))
        if int8_precision is not None:
            found.append((engine, int8_precision, int8))
    if torch:
        found.append(("torch", "fp32", model))
    return found


def use_precision(precision: str | None) -> None:
    """Make this process and the commands it starts compute as ``precision`` says: an fp32
    variant in fp32 even from an export stamped for bf16; None: the default."""
    if precision == "fp32":
        os.environ[BF16_ENV] = "0"
    else:
        os.environ.pop(BF16_ENV, None)


def test_files(model: Path, n: int) -> tuple[list[Path], list[str]]:
    """The model's test-split files (``n`` evenly spaced, or all) and their labels."""
    card = load_card(model / "model_card.json")
    manifest = REPO / MANIFESTS[model.name.split("-")[0]]
    samples, classes = read_manifest(manifest, "test", card.classes)
    if n:
        samples = evenly_spaced(samples, -(-n // len(classes)))[:n]
    for sample in samples:  # the page cache: time decoding, not the disk
        sample.path.read_bytes()
    return [s.path for s in samples], [classes[s.label] for s in samples]


def images_for(views: int, args: argparse.Namespace) -> int:
    """How many test images a model with ``views`` test-time views is run on (0: all)."""
    return args.n_views if views > 1 else args.n


def command_line_runs(model: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """What runs as fresh processes: the one-image start-up and every end-to-end run."""
    card = load_card(model / "model_card.json")
    paths, labels = test_files(model, images_for(card.test_time_views, args))
    one_image = [*CLI, "predict", str(paths[0]), "--model", str(model)]
    use_precision(None)
    entry: dict[str, Any] = {
        "input_size": card.preprocessing.input_size,
        "test_time_views": card.test_time_views,
        "extra_views_below": card.extra_views_below,
        "test_images": len(paths),
        "card_test_accuracy": card.test_metrics.accuracy if card.test_metrics else None,
        "startup_predict_one_image": medians([*one_image, "--out", str(tmp / "1.csv")], args.runs),
        "backends": {},
    }
    print(model.name, "one-image predict", entry["startup_predict_one_image"], flush=True)
    entry["backends"] = end_to_end(variants(model, args.torch), paths, labels, args.e2e_runs, tmp)
    for key, row in entry["backends"].items():
        print(model.name, key, row, flush=True)
    flagged = first_flagged(model, paths, tmp) if card.fallback is not None else None
    if flagged is not None:
        one_flagged = [*CLI, "predict", flagged, "--model", str(model), "--out", str(tmp / "1.csv")]
        entry["startup_predict_one_flagged_image"] = {
            "image": flagged,
            **medians(one_flagged, args.runs),
        }
        print(model.name, "one flagged image", entry["startup_predict_one_flagged_image"])
    return entry


def first_flagged(model: Path, paths: list[Path], tmp: Path) -> str | None:
    """The first of ``paths`` that ``leukoscope predict`` with ``model`` as a user runs it
    (default options) flags uncertain (None: none): for a model with a fallback, a one-image
    ``predict`` of it opens the fallback too, its slowest case."""
    out = tmp / "flags.csv"
    command = [*CLI, "predict", *map(str, paths), "--model", str(model), "--out", str(out)]
    subprocess.run(command, capture_output=True, cwd=REPO, check=True)
    with out.open(newline="") as handle:
        return next(
            (row["source"] for row in csv.DictReader(handle) if row["uncertain"] == "true"), None
        )


def in_process_runs(model: Path, entry: dict[str, Any], args: argparse.Namespace) -> None:
    """What runs in this process: decoding, pipeline, model only and batch 1 (after every
    fresh process has run: forking a process that has loaded OpenVINO, ONNX Runtime and
    PyTorch crashed it). Each predictor is let go before the next is loaded: kept, the
    runtimes' memory pools (batches of 64 images in four views) filled the 24 GiB."""
    views = entry["test_time_views"]
    paths, _ = test_files(model, images_for(views, args))
    pixels = None
    for backend, precision, path in variants(model, args.torch):
        use_precision(precision)
        predictor = Predictor.load(path, backend=backend)
        if pixels is None:
            config = predictor.card.preprocessing
            pixels = next(pixel_batches(paths[: 64 // views], config, workers=2)).pixels
            entry["decoding"] = decoding(paths[: args.decode_n], predictor, 2)
        row = entry["backends"][f"{backend}-{precision}"]
        bound = model_only(predictor, pixels, args.batches)
        row["model_only_images_per_s"] = round(bound, 1)
        row["share_of_model_bound"] = round(row["images_per_s"] / bound, 3)
        rate, estimate_s = pipeline(predictor, paths)
        row["pipeline_images_per_s"] = round(rate, 1)
        row["scale_estimate_s"] = round(estimate_s, 3)
        decoded = entry["decoding"]["threads_images_per_s"]
        row["share_of_decoding_bound"] = round(row["images_per_s"] / decoded, 3)
        row["pipeline_share_of_decoding_bound"] = round(row["pipeline_images_per_s"] / decoded, 3)
        row |= latency(predictor, paths[: args.latency])
        print(model.name, backend, precision, row, flush=True)
        del predictor
        gc.collect()


def table(results: dict[str, Any]) -> str:
    """The speed table of docs/benchmarks.md and the README from a results file ("–" for a
    figure that a results file from before it was measured lacks)."""
    lines = [
        "| model | runtime | images/s end to end | pipeline | accuracy (errors) "
        "| batch-1 p50 / p95 | model only | share of decoding: end to end, pipeline "
        "| one-image `predict` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in results["results"].items():
        first = True
        for key, row in entry["backends"].items():
            backend, precision = key.split("-", 1)
            views, below = entry["test_time_views"], entry.get("extra_views_below")
            shown = f"{views} view{'s' if views > 1 else ''}"
            if below is not None:
                shown = f"1 view, {views} below {below:g}"
            label = (
                f"`{name}` ({entry['input_size']} px, {shown}; "
                f"{entry['test_images']:,} test images)"
                if first
                else ""
            )
            startup = f"{entry['startup_predict_one_image']['median_s']:.2f} s" if first else ""
            if first and "startup_predict_one_flagged_image" in entry:
                flagged_s = entry["startup_predict_one_flagged_image"]["median_s"]
                startup += f" ({flagged_s:.2f} s for a flagged cell)"
            shares = "–"
            if "share_of_decoding_bound" in row:
                shares = (
                    f"{row['share_of_decoding_bound']:.2f}, "
                    f"{row['pipeline_share_of_decoding_bound']:.2f}"
                )
            lines.append(
                f"| {label} | {ENGINE_NAMES[backend]} {precision} | {row['images_per_s']:.1f} "
                f"| {row.get('pipeline_images_per_s', '–')} "
                f"| {100 * row['accuracy']:.2f}% ({row['errors']}) "
                f"| {row['batch1_p50_ms']:.1f} / {row['batch1_p95_ms']:.1f} ms "
                f"| {row['model_only_images_per_s']:.1f} | {shares} | {startup} |"
            )
            first = False
    startup = results["startup"]
    lines += [
        "",
        f"`leukoscope --help`: {startup['help']['median_s']:.2f} s; a usage error: "
        f"{startup['usage_error']['median_s']:.2f} s (medians).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", help="comma-separated model folders (default: released)")
    parser.add_argument("--n", type=int, default=0, help="test images per model (0: all)")
    parser.add_argument(
        "--n-views", type=int, default=256, help="the same for models with test-time views"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each start-up command")
    parser.add_argument(
        "--e2e-runs", type=int, default=3, help="turns of the end-to-end runs (median)"
    )
    parser.add_argument("--latency", type=int, default=40, help="images for batch 1")
    parser.add_argument("--batches", type=int, default=5, help="model-only calls of batch 64")
    parser.add_argument("--decode-n", type=int, default=512, help="images for decoding only")
    parser.add_argument("--torch", action="store_true", help="also run eager PyTorch")
    parser.add_argument("--table", action="store_true", help="print the tables of --out")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/inference.json")
    args = parser.parse_args()
    faulthandler.enable()  # a crash of a runtime's native code says where it happened
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return

    models = [Path(m) for m in args.models.split(",")] if args.models else released_models()
    machine = describe_machine()
    load_before = os.getloadavg()
    image = read_manifest(REPO / MANIFESTS["wbc5"], "test")[0][0].path
    startup = {
        "help": medians([*CLI, "--help"], args.runs),
        "usage_error": medians([*CLI, "predict", "--modle", "m", str(image)], args.runs, 2),
    }
    print("start-up", startup, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {model.name: command_line_runs(model, args, Path(tmp)) for model in models}
    for model in models:
        in_process_runs(model, results[model.name], args)
        save(args.out, machine, startup, load_before, results)  # each model's when it is done
    # Tearing down OpenVINO and ONNX Runtime together at exit crashed the interpreter now and
    # then (SIGSEGV in native code); the results are written, so leave without the teardown.
    sys.stdout.flush()
    os._exit(0)


def save(
    out: Path,
    machine: dict[str, Any],
    startup: dict[str, Any],
    load_before: tuple[float, float, float],
    results: dict[str, Any],
) -> None:
    write_results(
        out,
        "inference",
        machine,
        data="test split of each model's manifest (runs/manifests/<wbc5|pbc8>-seed0.csv)",
        batch_size=64,
        decode_threads=2,
        runtime_threads=cpu_cores(),
        targets_s=TARGETS_S,
        load_average={"before": load_before, "after": os.getloadavg()},
        startup=startup,
        notes="End to end: `leukoscope predict FILES --model EXPORT --backend B --out X.csv` "
        "as a fresh process (start-up included), the median of --e2e-runs turns. Pipeline: "
        "Predictor.predict_paths in-process, without start-up and scale estimate. One-image "
        "predict: the model folder with the default options. Models with test-time views run "
        "on --n-views test images (evenly spaced through the classes), the others on --n (0: "
        "the whole test split). A load average above the core count means other processes "
        "shared the cores.",
        results=results,
    )


if __name__ == "__main__":
    main()
