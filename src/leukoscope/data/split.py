"""Leakage-free, stratified, seeded train/val/test manifests.

Byte-identical and near-duplicate images are clustered first and every cluster goes to one
split, so no cell is seen in training and then again in test. A cluster whose members carry
different labels is a label conflict: all of it is excluded and listed, because we cannot know
which label is right. Of byte-identical copies within a class only the first is kept, so no
image is counted twice in an evaluation.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from leukoscope.data.scan import (
    FileRecord,
    duplicate_clusters,
    exact_duplicate_groups,
    list_class_files,
    near_duplicate_pairs,
    scan_files,
)
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_text

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "sha256")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    split: str
    sha256: str


@dataclass(frozen=True)
class Excluded:
    path: str
    label: str
    reason: str


@dataclass
class SplitResult:
    rows: list[ManifestRow]
    excluded: list[Excluded]

    def counts(self) -> dict[str, dict[str, int]]:
        """Class -> split -> number of images."""
        table: dict[str, dict[str, int]] = {}
        for row in self.rows:
            per = table.setdefault(row.label, dict.fromkeys(SPLITS, 0))
            per[row.split] += 1
        return dict(sorted(table.items()))


def assign_splits(
    records: Sequence[FileRecord],
    classes: Sequence[str],
    *,
    seed: int,
    val: float,
    test: float,
) -> SplitResult:
    """Assign each usable image of ``classes`` to a split, whole duplicate clusters at a time."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise LeukoscopeError(
            f"--val {val} and --test {test} must be fractions in [0, 1) with a sum below 1"
        )
    wanted = set(classes)
    clusters = duplicate_clusters(
        len(records), exact_duplicate_groups(records), near_duplicate_pairs(records)
    )
    excluded: list[Excluded] = []
    by_class: dict[str, list[list[int]]] = {label: [] for label in classes}
    for cluster in clusters:
        members = [i for i in cluster if records[i].label in wanted]
        if not members:
            continue
        bad = [i for i in members if not records[i].usable]
        excluded += [
            Excluded(records[i].path, records[i].label or "?", records[i].detail or "") for i in bad
        ]
        good = [i for i in members if records[i].usable]
        labels = {records[i].label for i in cluster if records[i].usable}
        if len(labels) > 1:
            names = ", ".join(records[i].path for i in cluster if records[i].usable)
            both = " and ".join(sorted(map(str, labels)))
            reason = f"label conflict: duplicate images labelled {both}"
            excluded += [
                Excluded(records[i].path, records[i].label or "?", f"{reason} ({names})")
                for i in good
            ]
        elif good:
            kept: dict[str, int] = {}
            for i in good:
                if records[i].sha256 in kept:
                    first = records[kept[records[i].sha256]].path
                    excluded.append(
                        Excluded(records[i].path, records[i].label or "?", f"copy of {first}")
                    )
                else:
                    kept[records[i].sha256] = i
            by_class[records[good[0]].label or "?"].append(list(kept.values()))

    rows: list[ManifestRow] = []
    for label in classes:
        groups = by_class[label]
        if not groups:
            raise LeukoscopeError(f"class {label!r} has no usable images")
        rng = random.Random(f"leukoscope-split:{seed}:{label}")
        rng.shuffle(groups)
        total = sum(len(g) for g in groups)
        n_test, n_val = round(total * test), round(total * val)
        seen = 0
        for group in groups:
            split = "test" if seen < n_test else "val" if seen < n_test + n_val else "train"
            seen += len(group)
            rows += [ManifestRow(records[i].path, label, split, records[i].sha256) for i in group]
    rows.sort(key=lambda r: r.path)
    excluded.sort(key=lambda e: e.path)
    return SplitResult(rows=rows, excluded=excluded)


def split_folder(
    root: str | Path,
    classes: Sequence[str],
    *,
    seed: int,
    val: float,
    test: float,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SplitResult:
    """Scan every class folder of ``root`` (so conflicts with other classes are seen too) and
    split the images of ``classes``. Manifest paths are relative to ``root``."""
    files = list_class_files(root)
    if on_total:
        on_total(len(files))
    records = scan_files(root, files, workers=workers, on_progress=on_progress)
    present = {r.label for r in records}
    missing = [label for label in classes if label not in present]
    if missing:
        raise LeukoscopeError(f"{root}: no folder for class(es) {', '.join(missing)}")
    return assign_splits(records, classes, seed=seed, val=val, test=test)


def write_manifest(result: SplitResult, root: str | Path, out: str | Path) -> Path:
    """Write the manifest CSV (paths relative to the manifest's folder) and, beside it,
    ``<name>.excluded.csv`` listing what was left out and why. Returns the excluded list's path."""
    out = Path(out)
    base = Path(os.path.relpath(Path(root).resolve(), out.resolve().parent))
    atomic_write_text(
        out,
        _csv(
            MANIFEST_COLUMNS,
            [((base / r.path).as_posix(), r.label, r.split, r.sha256) for r in result.rows],
        ),
    )
    excluded_path = out.with_name(out.stem + ".excluded.csv")
    atomic_write_text(
        excluded_path,
        _csv(
            ("path", "label", "reason"),
            [((base / e.path).as_posix(), e.label, e.reason) for e in result.excluded],
        ),
    )
    return excluded_path


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
