"""The cell locators: single-cell framing against experts' masks and on PBC; field detection on
synthetic fields and on the external images; and their speed.

For each set under ``--external`` (``<set>/images/<class>/NNN.png`` with ``<set>/masks/NNN.png``:
0 background, 128 cytoplasm, 255 nucleus) every image is located and compared with the mask's
cell (cytoplasm and nucleus): intersection over union, centre error and diameter error, both
relative to the mask's diameter (of the circle with the cell's area), and how often no cell was
found. On a PBC sample (``--pbc-per-class`` images of each class) it records how often a cell is
found and the distribution of the cell's diameter as a fraction of the image's shorter side: the
median over the white-cell classes is the framing default (``DEFAULT_CELL_FRACTION``). Timing is
the locator alone on one thread, decoded images in memory.

Fields (:func:`leukoscope.cells.fields.locate_cells`): ``--fields`` synthetic 1920x1080 fields
composed from PBC images that the sample above did not use (:mod:`leukoscope.cells.synthetic`:
white cells cut out with the single-cell locator's mask, only where it scored at least 0.8;
a background tiled from other images with their white cell painted out; PBC platelet clumps as
distractors; magnification 0.5-2x of PBC's, stain and background shifts, blur, noise, JPEG), and
every external image as a field whose one white cell is the experts' mask's box. A white cell is
found when a box overlaps its own at IoU >= 0.5 (each box matched once, best first); precision
counts every other box as false. A quarter as many fields again hold red cells only: every box
on them is false.

Run: python benchmarks/locate.py [--external ../shared/data/external] [--pbc ../shared/data/pbc]
     [--pbc-per-class 200] [--fields 40] [--out benchmarks/results/locate.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import write_results

from leukoscope.cells import synthetic
from leukoscope.cells.fields import CellBox, locate_cells
from leukoscope.cells.framing import DEFAULT_CELL_FRACTION
from leukoscope.cells.locate import CellLocation, locate_cell
from leukoscope.data.images import decode_rgb, is_image_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
NOT_WHITE_CELLS = {"platelet"}
"""PBC classes whose images hold no white cell."""


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(decode_rgb(path))


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
    ious: list[float] = []
    centre_errors: list[float] = []
    diameter_errors: list[float] = []
    timings: list[float] = []
    missed: list[dict[str, str]] = []
    for path in sorted((folder / "images").glob("*/*.png")):
        truth = read_rgb(folder / "masks" / path.name)[..., 0] > 0  # grey levels 0/128/255
        location = timed(locate_cell, read_rgb(path), timings)
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
            location = timed(locate_cell, rgb, timings)
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


Box = tuple[int, int, int, int]


def box_iou(a: Box, b: Box) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def assign(truth: list[Box], found: list[Box]) -> list[int | None]:
    """For each true box, the index of the found box matching it at IoU >= 0.5, or None
    (greedy, best pairs first, each found box used once)."""
    pairs = sorted(
        ((box_iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)),
        reverse=True,
    )
    matched: list[int | None] = [None] * len(truth)
    used: set[int] = set()
    for iou, i, j in pairs:
        if iou < 0.5:
            break
        if matched[i] is None and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def match(truth: list[Box], found: list[CellBox]) -> list[bool]:
    """For each true box, whether a found box matches it (see :func:`assign`)."""
    return [j is not None for j in assign(truth, [box(b) for b in found])]


def detection(
    truths: list[list[Box]], founds: list[list[CellBox]], ignore: list[list[Box]] | None = None
) -> dict[str, Any]:
    """Recall and precision at IoU 0.5; also precision without the boxes at the image's edge
    and, where ``ignore`` lists boxes per image (distractors), the false boxes on them."""
    hits = [match(t, f) for t, f in zip(truths, founds, strict=True)]
    true_positive = sum(sum(h) for h in hits)
    cells = sum(len(t) for t in truths)
    boxes = sum(len(f) for f in founds)
    inner = [[b for b in f if not b.edge] for f in founds]
    inner_hits = sum(sum(match(t, f)) for t, f in zip(truths, inner, strict=True))
    result = {
        "images": len(truths),
        "white_cells": cells,
        "boxes": boxes,
        "recall": round(true_positive / max(1, cells), 4),
        "precision": round(true_positive / max(1, boxes), 4),
        "precision_without_edge_boxes": round(inner_hits / max(1, sum(map(len, inner))), 4),
    }
    if ignore is not None:
        on_distractors = sum(
            1
            for t, f, d in zip(truths, founds, ignore, strict=True)
            for b in f
            if max((box_iou(box(b), x) for x in t), default=0) < 0.5
            and max((box_iou(box(b), x) for x in d), default=0) >= 0.3
        )
        result["false_boxes_on_distractors"] = on_distractors
        result["precision_without_distractor_boxes"] = round(
            true_positive / max(1, boxes - on_distractors), 4
        )
    return result


def box(b: CellBox) -> Box:
    return (b.x_min, b.y_min, b.x_max, b.y_max)


def pbc_files(root: Path, classes: list[str], start: int, stop: int | None) -> list[Path]:
    """Images ``start:stop`` of each class (sorted by name)."""
    return [
        p
        for name in classes
        for p in sorted(q for q in (root / name).iterdir() if is_image_name(q))[start:stop]
    ]


def field_benchmark(root: Path, count: int, seed: int = 0) -> dict[str, Any]:
    """Recall and precision on synthetic fields, by kind of cell, and the time per field."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in NOT_WHITE_CELLS)
    cells = []
    for path in pbc_files(root, classes, -60, None):
        rgb = read_rgb(path)
        location = locate_cell(rgb)
        if isinstance(location, CellLocation) and location.score >= 0.8:
            cells.append(synthetic.cut_out(rgb, location))
    tiles: list[np.ndarray] = []
    for path in pbc_files(root, classes, -80, -60):
        rgb = read_rgb(path)
        location = locate_cell(rgb)
        found = location if isinstance(location, CellLocation) else None
        tiles.extend(tile[:, :360] for tile in synthetic.background_tiles(rgb, found))
    platelets = synthetic.cutouts([read_rgb(p) for p in pbc_files(root, ["platelet"], -40, None)])
    rng = np.random.default_rng(seed)
    truths: list[list[Box]] = []
    founds: list[list[CellBox]] = []
    distractors: list[list[Box]] = []
    kinds: list[list[bool]] = []
    scales: list[float] = []
    timings: list[float] = []
    for _ in range(count):
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        field = synthetic.compose_field(
            cells,
            tiles,
            rng,
            scale=scale,
            cells=int(rng.integers(2, 9)),
            touching=1,
            at_edge=1,
            distractors=[platelets[i] for i in rng.choice(len(platelets), 2, replace=False)],
            stain_shift=float(rng.uniform(0, 1)),
            blur=float(rng.uniform(0, 1.5)),
            jpeg_quality=int(rng.integers(60, 96)),
        )
        found = timed(locate_cells, field.rgb, timings)
        truths.append(field.boxes)
        distractors.append(field.distractor_boxes)
        founds.append(found)
        kinds.append(field.edge)
        scales.append(scale)
    empty = [
        len(
            locate_cells(
                synthetic.compose_field(
                    cells,
                    tiles,
                    rng,
                    scale=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
                    cells=0,
                    touching=0,
                    at_edge=0,
                    stain_shift=float(rng.uniform(0, 1)),
                    blur=float(rng.uniform(0, 1.5)),
                    jpeg_quality=int(rng.integers(60, 96)),
                ).rgb
            )
        )
        for _ in range(count // 4)
    ]
    hits = [match(t, f) for t, f in zip(truths, founds, strict=True)]
    at_edge = [
        h for hs, es in zip(hits, kinds, strict=True) for h, e in zip(hs, es, strict=True) if e
    ]
    small = [h for hs, s in zip(hits, scales, strict=True) for h in hs if s < 0.75]
    return {
        **detection(truths, founds, distractors),
        "recall_cells_at_edge": round(float(np.mean(at_edge)), 4) if at_edge else None,
        "recall_at_scale_below_0.75": round(float(np.mean(small)), 4) if small else None,
        "white_cell_cutouts": len(cells),
        "boxes_on_fields_of_red_cells_only": empty,
        "size": [1920, 1080],
        "ms_per_field": summary([1000 * t for t in timings]),
    }


def external_fields(folder: Path) -> dict[str, Any]:
    """Each external image as a field whose one white cell is the experts' mask's box."""
    truths, founds = [], []
    for path in sorted((folder / "images").glob("*/*.png")):
        ys, xs = np.nonzero(read_rgb(folder / "masks" / path.name)[..., 0] > 0)
        truths.append([(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)])
        founds.append(locate_cells(read_rgb(path)))
    return detection(truths, founds)


def timed(function: Any, rgb: np.ndarray, timings: list[float]) -> Any:
    start = time.perf_counter()
    result = function(rgb)
    timings.append(time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--external", type=Path, default=SHARED / "external")
    parser.add_argument("--pbc", type=Path, default=SHARED / "pbc")
    parser.add_argument("--pbc-per-class", type=int, default=200)
    parser.add_argument("--fields", type=int, default=40, help="synthetic fields to compose")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/locate.json")
    args = parser.parse_args()
    external = {
        folder.name: masked_set(folder)
        for folder in sorted(args.external.iterdir())
        if (folder / "masks").is_dir()
    }
    pbc = pbc_sample(args.pbc, args.pbc_per_class)
    fields = {
        "synthetic": field_benchmark(args.pbc, args.fields),
        **{name: external_fields(args.external / name) for name in external},
    }
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
        fields=fields,
    )


if __name__ == "__main__":
    main()
