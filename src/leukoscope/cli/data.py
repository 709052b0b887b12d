"""``leukoscope data``: audit, split, resize and download datasets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from leukoscope.classes import resolve_classes
from leukoscope.cli.app import app, console, progress_bar
from leukoscope.data.audit import audit_folder, summary_lines
from leukoscope.data.download import download_dataset
from leukoscope.data.resize import FORMATS, resize_manifest
from leukoscope.data.split import SPLITS, split_folder, write_manifest
from leukoscope.fileio import atomic_write_json

DEFAULT_DATA = "../shared/data/pbc"

data_app = typer.Typer(
    help="Audit, split, resize and download cell-image datasets.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def default_data_dir() -> Path:
    """``$LEUKOSCOPE_DATA``, else ``../shared/data/pbc``."""
    return Path(os.environ.get("LEUKOSCOPE_DATA") or DEFAULT_DATA)


def run_audit(root: Path, sample_per_class: int | None = None) -> dict[str, Any]:
    """Audit ``root`` behind a progress bar."""
    with progress_bar("Auditing images") as (progress, task):
        return audit_folder(
            root,
            sample_per_class=sample_per_class,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )


def print_audit(report: dict[str, Any]) -> None:
    """The audit as a per-class table followed by the findings."""
    table = Table(title=f"Audit of {report['root']}")
    table.add_column("class")
    table.add_column("folders")
    table.add_column("files", justify="right")
    table.add_column("usable", justify="right")
    table.add_column("problems", justify="right")
    for label, entry in report["classes"].items():
        table.add_row(
            label,
            ", ".join(entry["folders"]),
            str(entry["files"]),
            str(entry["usable"]),
            str(entry["problems"]) if entry["problems"] else "",
        )
    console.print(table)
    for line in summary_lines(report):
        console.print(f"• {line}", highlight=False)


@data_app.command("audit")
def audit(
    data_dir: Path = typer.Argument(..., help="Folder of class folders."),
    out: Path | None = typer.Option(None, "--out", help="Write the full report as JSON here."),
    sample: int | None = typer.Option(
        None, "--sample", min=1, help="Only the first N files of each class folder."
    ),
) -> None:
    """Count images per class and find unreadable, hidden, duplicate and conflicting files."""
    report = run_audit(data_dir, sample)
    print_audit(report)
    if out is not None:
        atomic_write_json(out, report)
        console.print(f"Full report: {out}")


@data_app.command("split")
def split(
    data_dir: Path = typer.Argument(..., help="Folder of class folders."),
    classes: str = typer.Option(
        "wbc5", "--classes", help="wbc5, pbc8, or comma-separated class names."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; same inputs give the same manifest."),
    val: float = typer.Option(0.15, "--val", help="Fraction of each class for validation."),
    test: float = typer.Option(0.15, "--test", help="Fraction of each class for testing."),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write."),
) -> None:
    """Write a stratified, seeded, leakage-free train/val/test manifest.

    Byte-identical and near-duplicate images always share a split; duplicates labelled
    differently are excluded and listed in <out>.excluded.csv.
    """
    wanted = resolve_classes(classes)
    with progress_bar("Hashing images") as (progress, task):
        result = split_folder(
            data_dir,
            wanted,
            seed=seed,
            val=val,
            test=test,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    excluded_path = write_manifest(result, data_dir, out)
    table = Table(title=f"Split of {data_dir} (seed {seed})")
    table.add_column("class")
    for name in SPLITS:
        table.add_column(name, justify="right")
    for label, per in result.counts().items():
        table.add_row(label, *(str(per[name]) for name in SPLITS))
    console.print(table)
    console.print(f"Manifest: {out} ({len(result.rows)} images)")
    if result.excluded:
        console.print(f"Excluded {len(result.excluded)} file(s), listed in {excluded_path}:")
        for item in result.excluded[:10]:
            console.print(f"  {item.path}: {item.reason}", highlight=False)


@data_app.command("resize")
def resize(
    manifest: Path = typer.Argument(..., help="Split manifest CSV (data split)."),
    out: Path = typer.Option(..., "--out", help="Folder for the copy and its manifest.csv."),
    size: int = typer.Option(224, "--size", min=16, help="Square side in pixels."),
    splits: str = typer.Option("train,val,test", "--splits", help="Comma-separated splits."),
    fmt: str = typer.Option("webp", "--format", help=f"One of {', '.join(FORMATS)}."),
    quality: int = typer.Option(90, "--quality", min=1, max=100, help="WebP/JPEG quality."),
    workers: int = typer.Option(2, "--workers", min=0, help="Decoding worker processes."),
) -> None:
    """Write a resized copy of a manifest's images with a manifest of its own.

    Resized as training does, so a model trained on the copy (say, on a GPU machine the
    originals are too large to ship to) sees the same pixels, apart from lossy encoding.
    """
    wanted = tuple(s.strip() for s in splits.split(",") if s.strip())
    with progress_bar("Resizing images") as (progress, task):
        result = resize_manifest(
            manifest,
            out,
            size=size,
            splits=wanted,
            fmt=fmt,
            quality=quality,
            workers=workers,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(f"Wrote {result.written} images and {result.manifest}")
    for path, reason in result.skipped:
        console.print(f"  skipped {path}: {reason}", highlight=False)


@data_app.command("download")
def download(
    name: str = typer.Argument("pbc", help="Dataset to fetch (pbc)."),
    dest: Path | None = typer.Option(None, "--dest", help="Where to unpack (default: cache)."),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected archive checksum."),
) -> None:
    """Download the published dataset, verify it and unpack it into the user's cache."""
    with progress_bar(f"Downloading {name}") as (progress, task):
        root = download_dataset(
            name,
            dest=dest,
            expected_sha256=sha256,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(f"{name} is in {root}; use it with LEUKOSCOPE_DATA={root}")
