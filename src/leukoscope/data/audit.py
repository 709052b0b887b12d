"""Dataset audit: what is in a folder of class folders, and what is wrong with it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leukoscope.data.scan import (
    NEAR_DUPLICATE_BITS,
    FileRecord,
    exact_duplicate_groups,
    find_class_folders,
    list_class_files,
    near_duplicate_pairs,
    scan_files,
)

PROBLEM_KINDS: tuple[str, ...] = (
    "hidden",
    "zero_byte",
    "non_image",
    "truncated",
    "too_large",
    "unreadable",
)


def audit_folder(
    root: str | Path,
    *,
    sample_per_class: int | None = None,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Scan ``root`` and return the audit report as a JSON-ready dict.

    ``sample_per_class`` limits the scan to the first N files (by name) of each class folder,
    for a quick look at a large dataset.
    """
    root = Path(root)
    folders = find_class_folders(root)
    files = list_class_files(root)
    if sample_per_class is not None:
        files = _sample(files, root, sample_per_class)
    if on_total:
        on_total(len(files))
    records = scan_files(root, files, workers=workers, on_progress=on_progress)
    return build_report(root, records, folders.unknown, folders.loose_files, sample_per_class)


def _sample(files: Sequence[Path], root: Path, per_class: int) -> list[Path]:
    taken: Counter[str] = Counter()
    kept: list[Path] = []
    for path in files:
        folder = path.relative_to(root).parts[0]
        if taken[folder] < per_class:
            taken[folder] += 1
            kept.append(path)
    return kept


def build_report(
    root: Path,
    records: Sequence[FileRecord],
    unknown_folders: Sequence[str] = (),
    loose_files: Sequence[str] = (),
    sample_per_class: int | None = None,
) -> dict[str, Any]:
    """Summarise scanned records: counts, problems, duplicates, label conflicts, image stats."""
    per_class: dict[str, dict[str, Any]] = {}
    for rec in records:
        entry = per_class.setdefault(
            rec.label or "?", {"folders": set(), "files": 0, "usable": 0, "problems": 0}
        )
        entry["folders"].add(rec.folder)
        entry["files"] += 1
        entry["usable" if rec.usable else "problems"] += 1
    for entry in per_class.values():
        entry["folders"] = sorted(entry["folders"])

    problems: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PROBLEM_KINDS}
    for rec in records:
        if rec.problem:
            problems[rec.problem].append({"path": rec.path, "detail": rec.detail})

    exact_within: list[dict[str, Any]] = []
    exact_across: list[dict[str, Any]] = []
    for group in exact_duplicate_groups(records):
        entry = {
            "sha256": records[group[0]].sha256,
            "paths": [records[i].path for i in group],
            "labels": sorted({records[i].label or "?" for i in group}),
        }
        (exact_across if len(entry["labels"]) > 1 else exact_within).append(entry)

    near = [
        {
            "paths": [records[i].path, records[j].path],
            "labels": [records[i].label, records[j].label],
            "distance_bits": dist,
            "label_conflict": records[i].label != records[j].label,
        }
        for i, j, dist in near_duplicate_pairs(records)
    ]

    usable = [r for r in records if r.usable]
    return {
        "root": str(root),
        "sampled_per_class": sample_per_class,
        "n_files": len(records),
        "n_usable": len(usable),
        "classes": dict(sorted(per_class.items())),
        "unknown_folders": list(unknown_folders),
        "loose_files": list(loose_files),
        "problems": problems,
        "exact_duplicates": {"within_class": exact_within, "across_classes": exact_across},
        "near_duplicates": {"max_distance_bits": NEAR_DUPLICATE_BITS, "pairs": near},
        "images": {
            "sizes": _counts(f"{r.width}x{r.height}" for r in usable),
            "modes": _counts(r.mode or "?" for r in usable),
            "formats": _counts(r.format or "?" for r in usable),
            "bytes": _counts_minmax(r.size for r in usable),
        },
    }


def _counts(values: Any) -> dict[str, int]:
    return dict(Counter(values).most_common())


def _counts_minmax(values: Any) -> dict[str, int]:
    vals = list(values)
    if not vals:
        return {}
    return {"min": min(vals), "max": max(vals), "mean": round(sum(vals) / len(vals))}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Plain-language findings, one per line, for the screen and the README."""
    lines = [f"{report['n_files']} files under class folders, {report['n_usable']} usable images"]
    for kind, items in report["problems"].items():
        if items:
            shown = ", ".join(item["path"] for item in items[:3])
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            lines.append(f"{len(items)} {kind.replace('_', '-')} file(s): {shown}{more}")
    dup = report["exact_duplicates"]
    if dup["within_class"]:
        extra = sum(len(g["paths"]) - 1 for g in dup["within_class"])
        lines.append(
            f"{len(dup['within_class'])} groups of byte-identical images within a class "
            f"({extra} redundant copies)"
        )
    for group in dup["across_classes"]:
        lines.append(
            f"label conflict: identical bytes labelled {' and '.join(group['labels'])}: "
            + ", ".join(group["paths"])
        )
    for pair in report["near_duplicates"]["pairs"]:
        kind = "label conflict, near-duplicate" if pair["label_conflict"] else "near-duplicate"
        lines.append(f"{kind} ({pair['distance_bits']} bits): {' ~ '.join(pair['paths'])}")
    if report["unknown_folders"]:
        lines.append(f"folders that are not a known class: {', '.join(report['unknown_folders'])}")
    sizes = report["images"]["sizes"]
    if len(sizes) > 1:
        top = ", ".join(f"{size} ({n})" for size, n in list(sizes.items())[:4])
        lines.append(f"{len(sizes)} different image sizes: {top}")
    return lines
