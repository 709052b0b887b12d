"""The single-cell locator against experts' masks, on PBC, and its speed.

For each set under ``--external`` (``<set>/images/<class>/NNN.png`` with ``<set>/masks/NNN.png``:
0 background, 128 cytoplasm, 255 nucleus) every image is located and compared with the mask's
cell (cytoplasm and nucleus): intersection over union, centre error and diameter error, both
relative to the mask's diameter (of the circle with the cell's area), and how often no cell was
found. On a PBC sample (``--pbc-per-class`` images of each class) it records how often a cell is
found and the distribution of the cell's diameter as a fraction of the image's shorter side: the
median over the white-cell classes is the framing default (``DEFAULT_CELL_FRACTION``). Timing is
the locator alone on one thread, decoded images in memory.

Run: python benchmarks/locate.py [--external ../shared/data/external] [--pbc ../shared/data/pbc]
     [--pbc-per-class 200] [--out benchmarks/results/locate.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results

from leukoscope.cells.locate import DEFAULT_CELL_FRACTION, CellLocation, locate_cell
from leukoscope.data.images import decode_rgb, is_image_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
NOT_WHITE_CELLS = {"platelet"}
"""PBC classes whose images hold no white cell."""


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(decode_rgb(path))


def timed_locate(rgb: np.ndarray, timings: list[float]) -> Any:
    start = time.perf_counter()
    location = locate_cell(rgb)
    timings.append(time.perf_counter() - start)
    return location


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if not a.size:
        return {}
    return {
        "mean": round(float(a.mean()), 4),
        "median": round(float(np.median(a)), 4),
        "p10": round(float(np.percentile(a, 10)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
    }


def masked_set(folder: Path) -> dict[str, Any]:
    """IoU, centre and diameter errors of the located cell against the experts' masks."""
    ious, centre_errors, diameter_errors, timings = [], [], [], []
    missed: list[dict[str, str]] = []
    for path in sorted((folder / "images").glob("*/*.png")):
        truth = read_rgb(folder / "masks" / path.name)[..., 0] > 0  # grey levels 0/128/255
        location = timed_locate(read_rgb(path), timings)
        if not isinstance(location, CellLocation):
            missed.append({"image": f"{path.parent.name}/{path.name}", "reason": location.reason})
            continue
        ys, xs = np.nonzero(truth)
        diameter = float(np.sqrt(4 * truth.sum() / np.pi))
        ious.append(float((location.mask & truth).sum() / (location.mask | truth).sum()))
        centre_errors.append(float(np.hypot(location.x - xs.mean(), location.y - ys.mean())))
        centre_errors[-1] /= diameter
        diameter_errors.append(location.diameter / diameter - 1)
    n = len(ious) + len(missed)
    return {
        "images": n,
        "found_rate": round(len(ious) / n, 4),
        "iou": summary(ious),
        "iou_at_least_0.5": round(float(np.mean(np.asarray(ious) >= 0.5)), 4),
        "centre_error_relative": summary(centre_errors),
        "diameter_error_relative": summary(diameter_errors),
        "abs_diameter_error_relative": summary(np.abs(diameter_errors).tolist()),
        "ms_per_image": summary([1000 * t for t in timings]),
        "not_found": missed,
    }


def pbc_sample(root: Path, per_class: int) -> dict[str, Any]:
    """Found rate and cell-diameter fraction per class on the first images of each class."""
    per_class_results: dict[str, Any] = {}
    white_fractions: list[float] = []
    timings: list[float] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if is_image_name(p))[:per_class]
        fractions, reasons = [], []
        for path in files:
            rgb = read_rgb(path)
            location = timed_locate(rgb, timings)
            if isinstance(location, CellLocation):
                fractions.append(location.diameter / min(rgb.shape[:2]))
            else:
                reasons.append(f"{path.name}: {location.reason}")
        if class_dir.name not in NOT_WHITE_CELLS:
            white_fractions.extend(fractions)
        per_class_results[class_dir.name] = {
            "images": len(files),
            "found_rate": round(len(fractions) / max(1, len(files)), 4),
            "diameter_fraction": summary(fractions),
            "not_found": reasons,
        }
    return {
        "per_class": per_class_results,
        "white_cell_diameter_fraction": summary(white_fractions),
        "ms_per_image": summary([1000 * t for t in timings]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--external", type=Path, default=SHARED / "external")
    parser.add_argument("--pbc", type=Path, default=SHARED / "pbc")
    parser.add_argument("--pbc-per-class", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/locate.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    external = {
        folder.name: masked_set(folder)
        for folder in sorted(args.external.iterdir())
        if (folder / "masks").is_dir()
    }
    pbc = pbc_sample(args.pbc, args.pbc_per_class)
    write_results(
        args.out,
        "locate",
        data={"external": str(args.external), "pbc": str(args.pbc)},
        default_cell_fraction=DEFAULT_CELL_FRACTION,
        load_average_after=os.getloadavg(),
        note="Timings on a machine shared with other jobs: a load average above the core count "
        "means other processes shared the cores.",
        external=external,
        pbc=pbc,
    )


if __name__ == "__main__":
    main()
