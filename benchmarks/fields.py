"""From field images to classified cells: speed, and accuracy against the same cells cut out.

Fields are built from PBC images of the manifest's test split that the model never saw, two
ways, each at PBC's magnification (``scale`` 1) and at other microscopes' (0.6-1.6x,
log-uniform), 1920x1080 and JPEG at quality 90:

- *tiled*: whole test images side by side (each cell in its own surroundings, as a PBC crop was
  cut from a field); the true boxes are the single-cell locator's, for the cells at least half
  inside the field (a box on one of the others counts as matching no cell). This measures what
  locating and cutting out loses against the images as the lab cut them.
- *pasted* (:mod:`leukoscope.cells.synthetic`): each white cell cut out with the single-cell
  locator's mask (where it scored at least 0.8) and pasted on a background tiled from
  train-split images (red cells and platelets only), one pair of cells touching, one cell cut by
  the field's edge, two PBC platelet clumps as distractors. The cells lose their own
  surroundings and gain tile seams and neighbours, which the model never saw in training.

Accuracy: every field is located, cut out and classified (:func:`leukoscope.inference.fields.
classify_field`, as ``predict --fields`` does); a cell is found when a box overlaps its own at
IoU >= 0.5 (benchmarks/locate.py's matching) and its call is the top class of that box. The
same cells' original PBC images are classified as files (``predict`` without ``--fields``).
Accuracy on the found cells is compared between the two (the target: within one point);
accuracy over every cell, a missed one counting as wrong, is given too, and the boxes that
match no cell (they would enter a differential).

PBC's red-cell diameter (the crops' scale, :data:`~leukoscope.cells.crops.PBC_RED_CELL_DIAMETER`)
is measured on the train-split images the background tiles come from.

Speed: ``--speed-fields`` 1920x1080 fields of six white cells each, from JPEG bytes to every
cell's prediction (decode, locate, cut out, classify), one field at a time after one warm-up,
on the predictor's backend (``--backend``, recorded; ``auto`` takes an ONNX export beside
the model when there is one), torch's threads on every core: wall-clock seconds, and the
process's CPU seconds (all its threads; on a machine shared with other jobs, what the field
cost whatever the others took). Locating alone is timed again after each field.

Run: python benchmarks/fields.py --model models/pbc8-efficientnet_lite0
     --manifest runs/manifests/pbc8-seed0.csv [--fields 60] [--per-class 60]
     [--speed-fields 10] [--out benchmarks/results/fields-pbc8-efficientnet_lite0.json]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from locate import assign, read_rgb, summary
from PIL import Image
from results_file import write_results

from leukoscope.cells import synthetic
from leukoscope.cells.crops import PBC_RED_CELL_DIAMETER
from leukoscope.cells.fields import locate_field
from leukoscope.cells.locate import CellLocation, locate_cell
from leukoscope.data.datasets import read_manifest
from leukoscope.data.images import decode_rgb
from leukoscope.inference.fields import classify_field
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import cpu_cores

REPO = Path(__file__).resolve().parents[1]
NOT_WHITE_CELLS = {"platelet"}
JPEG_QUALITY = 90


@dataclass
class TestCells:
    """Test-split cells: their images, where the single-cell locator found each, the cell cut
    out with its mask, the files and the labels."""

    images: list[np.ndarray] = field(default_factory=list)
    locations: list[CellLocation] = field(default_factory=list)
    cutouts: list[synthetic.Cutout] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def test_cells(manifest: Path, classes: tuple[str, ...], per_class: int) -> TestCells:
    """Up to ``per_class`` test-split cells of each white-cell class the model knows."""
    samples, labels = read_manifest(manifest, "test", classes)
    cells = TestCells()
    taken: dict[str, int] = {}
    for sample in samples:
        label = labels[sample.label]
        if label in NOT_WHITE_CELLS or taken.get(label, 0) >= per_class:
            continue
        rgb = read_rgb(sample.path)
        location = locate_cell(rgb)
        if isinstance(location, CellLocation) and location.score >= 0.8:
            cells.images.append(rgb)
            cells.locations.append(location)
            cells.cutouts.append(synthetic.cut_out(rgb, location))
            cells.paths.append(sample.path)
            cells.labels.append(label)
            taken[label] = taken.get(label, 0) + 1
    return cells


def backgrounds(
    manifest: Path, classes: tuple[str, ...], count: int
) -> tuple[list[np.ndarray], list[synthetic.Cutout], list[float]]:
    """Background tiles from ``count`` train-split white-cell images, platelet clumps, and the
    red-cell diameter the field locator measures on each of the images (where it can)."""
    samples, labels = read_manifest(manifest, "train", classes)
    tiles: list[np.ndarray] = []
    platelets: list[np.ndarray] = []
    red_cells: list[float] = []
    for sample in samples[:: max(1, len(samples) // count)]:
        rgb = read_rgb(sample.path)
        if (red := locate_field(rgb).red_cell_diameter) is not None:
            red_cells.append(red)
        if labels[sample.label] in NOT_WHITE_CELLS:
            platelets.append(rgb)
            continue
        location = locate_cell(rgb)
        found = location if isinstance(location, CellLocation) else None
        tiles.extend(tile[:, :360] for tile in synthetic.background_tiles(rgb, found))
    return tiles, synthetic.cutouts(platelets), red_cells


def compose(
    cells: list[synthetic.Cutout],
    tiles: list[np.ndarray],
    platelets: list[synthetic.Cutout],
    rng: np.random.Generator,
    scale: float,
    count: int = 6,
) -> tuple[synthetic.Field, bytes]:
    """A 1920x1080 field and its JPEG bytes."""
    chosen = []
    if platelets:
        chosen = [platelets[i] for i in rng.choice(len(platelets), 2, replace=False)]
    field = synthetic.compose_field(
        cells, tiles, rng, scale=scale, cells=count, touching=1, at_edge=1, distractors=chosen
    )
    buffer = io.BytesIO()
    Image.fromarray(field.rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return field, buffer.getvalue()


def mosaic(
    cells: TestCells, rng: np.random.Generator, scale: float
) -> tuple[synthetic.Field, bytes]:
    """A 1920x1080 field tiled from whole test images (each cell in its own surroundings),
    scaled by ``scale``, and its JPEG bytes; the boxes are the single-cell locator's."""
    tile_h, tile_w = 363, 360
    columns = int(np.ceil(1920 / (tile_w * scale)))
    rows = int(np.ceil(1080 / (tile_h * scale)))
    canvas = np.empty((rows * tile_h, columns * tile_w, 3), np.uint8)
    chosen = rng.choice(len(cells.images), rows * columns, replace=False)
    boxes, edge, pasted = [], [], []
    for k, index in enumerate(chosen):
        y, x = tile_h * (k // columns), tile_w * (k % columns)
        image = np.asarray(Image.fromarray(cells.images[index]).resize((tile_w, tile_h)))
        canvas[y : y + tile_h, x : x + tile_w] = image
        fx, fy = tile_w / cells.images[index].shape[1], tile_h / cells.images[index].shape[0]
        x0, y0, x1, y1 = cells.locations[index].box
        box = [(x + x0 * fx) * scale, (y + y0 * fy) * scale]
        box += [(x + x1 * fx) * scale, (y + y1 * fy) * scale]
        visible = (min(box[2], 1920) - box[0]) * (min(box[3], 1080) - box[1])
        if visible < 0.5 * (box[2] - box[0]) * (box[3] - box[1]):
            continue  # mostly outside the field
        boxes.append(
            (round(box[0]), round(box[1]), min(1920, round(box[2])), min(1080, round(box[3])))
        )
        edge.append(box[2] > 1920 or box[3] > 1080)
        pasted.append(int(index))
    size = (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale))
    rgb = np.asarray(Image.fromarray(canvas).resize(size, Image.Resampling.LANCZOS))[:1080, :1920]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return synthetic.Field(rgb, boxes, edge, [], pasted), buffer.getvalue()


FieldMaker = Callable[[np.random.Generator, float], tuple[synthetic.Field, bytes]]


def accuracy(
    predictor: Predictor,
    cells: TestCells,
    make_field: FieldMaker,
    fields: int,
    scales: tuple[float, float],
    seed: int,
) -> dict[str, Any]:
    """Field cells' calls against the same cells' files' calls (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    found_cells: list[int] = []
    field_calls: list[str] = []
    on_edge: list[bool] = []
    pasted = missed = extra = 0
    for _ in range(fields):
        scale = float(np.exp(rng.uniform(*np.log(scales))))
        field, data = make_field(rng, scale)
        rgb = np.asarray(decode_rgb(data))
        results = classify_field(predictor, rgb, "field")
        boxes = [r.box for r in results if r.box is not None]
        matched = assign(field.boxes, [(b.x_min, b.y_min, b.x_max, b.y_max) for b in boxes])
        pasted += len(field.boxes)
        missed += matched.count(None)
        extra += len(boxes) - (len(field.boxes) - matched.count(None))
        for cell, j, edge in zip(field.cells, matched, field.edge, strict=True):
            if j is not None:
                found_cells.append(cell)
                field_calls.append(str(results[j].prediction.label))
                on_edge.append(edge)
    unique = sorted(set(found_cells))
    direct = predictor.predict_paths([cells.paths[i] for i in unique], workers=0)
    file_call = {i: p.label for i, p in zip(unique, direct, strict=True)}
    truth = np.array([cells.labels[i] for i in found_cells])
    as_field = np.array(field_calls) == truth
    as_file = np.array([file_call[i] for i in found_cells]) == truth
    inner = ~np.array(on_edge, dtype=bool)
    return {
        "fields": fields,
        "scale_range": list(scales),
        "white_cells_pasted": pasted,
        "found": len(found_cells),
        "recall": round(len(found_cells) / max(1, pasted), 4),
        "boxes_matching_no_pasted_cell": extra,
        "accuracy_found_cells_as_field_crops": round(float(as_field.mean()), 4),
        "accuracy_same_cells_as_files": round(float(as_file.mean()), 4),
        "difference_points": round(100 * float(as_field.mean() - as_file.mean()), 2),
        "accuracy_found_cells_not_at_edge_as_field_crops": round(float(as_field[inner].mean()), 4),
        "accuracy_same_cells_not_at_edge_as_files": round(float(as_file[inner].mean()), 4),
        "accuracy_every_pasted_cell_missed_as_wrong": round(float(as_field.sum()) / pasted, 4),
        "calls_differing_between_crop_and_file": int((as_field != as_file).sum()),
    }


def speed(
    predictor: Predictor,
    cells: list[synthetic.Cutout],
    tiles: list[np.ndarray],
    platelets: list[synthetic.Cutout],
    count: int,
    seed: int,
) -> dict[str, Any]:
    """Seconds from a 1920x1080 field's JPEG bytes to its cells' predictions."""
    rng = np.random.default_rng(seed)
    jpegs = [compose(cells, tiles, platelets, rng, 1.0)[1] for _ in range(count + 1)]
    timings, cpu_times, locating, cell_counts = [], [], [], []
    for k, data in enumerate(jpegs):
        start, cpu = time.perf_counter(), time.process_time()
        rgb = np.asarray(decode_rgb(data))
        results = classify_field(predictor, rgb, "field")
        if k:  # the first is a warm-up
            timings.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu)
            cell_counts.append(len(results))
            start = time.perf_counter()
            locate_field(rgb)
            locating.append(time.perf_counter() - start)
    return {
        "fields": count,
        "size": [1920, 1080],
        "white_cells_per_field": summary([float(n) for n in cell_counts]),
        "seconds_per_field": summary(timings),
        "cpu_seconds_per_field": summary(cpu_times),
        "seconds_locating_alone": summary(locating),
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": cpu_cores(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument(
        "--fields", type=int, default=60, help="fields per condition (0: speed alone)"
    )
    parser.add_argument("--per-class", type=int, default=60, help="test cells per class")
    parser.add_argument("--backgrounds", type=int, default=200, help="images for the tiles")
    parser.add_argument("--speed-fields", type=int, default=10)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or REPO / f"benchmarks/results/fields-{args.model.name}.json"
    predictor = Predictor.load(args.model, backend=args.backend)
    cells = test_cells(args.manifest, predictor.classes, args.per_class)
    tiles, platelets, red_cells = backgrounds(args.manifest, predictor.classes, args.backgrounds)
    timing = speed(predictor, cells.cutouts, tiles, platelets, args.speed_fields, args.seed)

    def pasted(rng: np.random.Generator, scale: float) -> tuple[synthetic.Field, bytes]:
        count = int(rng.integers(3, 9))
        return compose(cells.cutouts, tiles, platelets, rng, scale, count)

    def tiled(rng: np.random.Generator, scale: float) -> tuple[synthetic.Field, bytes]:
        return mosaic(cells, rng, scale)

    scales = {"pbc_magnification": (1.0, 1.0), "other_magnifications": (0.6, 1.6)}
    conditions = {
        f"{kind}_{name}": accuracy(predictor, cells, maker, args.fields, scale, args.seed)
        for kind, maker in {"tiled": tiled, "pasted": pasted}.items()
        for name, scale in scales.items()
        if args.fields
    }
    write_results(
        out,
        "fields",
        model=str(args.model),
        backend=predictor.backend,
        test_time_views=predictor.card.test_time_views,
        manifest=str(args.manifest),
        test_cells=len(cells.paths),
        background_tiles=len(tiles),
        pbc_red_cell_diameter={"images": len(red_cells), **summary(red_cells)},
        pbc_red_cell_diameter_assumed=PBC_RED_CELL_DIAMETER,
        load_average_after=os.getloadavg(),
        note="Timings on a machine shared with other jobs: a load average above the core count "
        "means other processes shared the cores.",
        speed=timing,
        accuracy=conditions,
    )


if __name__ == "__main__":
    main()
