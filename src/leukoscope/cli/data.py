"""``leukoscope data``: audit, split, resize and download datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from leukoscope.cli.console import console, print_audit, progress_bar
from leukoscope.cli.options import Command, Dataset, Group, ImageFormat

data_app = typer.Typer(
    cls=Group, help="Audit, split, resize and download cell-image datasets.", no_args_is_help=True
)

DataDir = Annotated[Path, typer.Argument(help="Folder of class folders.")]


@data_app.command("audit", cls=Command)
def audit(
    data_dir: DataDir,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the full report as JSON here.")
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Only the first N files of each class folder."),
    ] = None,
) -> None:
    """Count images per class and find unreadable, hidden, duplicate and conflicting files."""
    from leukoscope.data.audit import audit_folder
    from leukoscope.fileio import atomic_write_json

    with progress_bar("Auditing images") as tracker:
        report = audit_folder(
            data_dir,
            sample_per_class=sample,
            on_total=tracker.set_total,
            on_progress=tracker.advance,
        )
    print_audit(report)
    if out is not None:
        atomic_write_json(out, report)
        console.print(f"Full report: {out}")


@data_app.command("split", cls=Command)
def split(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write.")],
    classes: Annotated[
        str, typer.Option("--classes", help="wbc5, pbc8, or comma-separated class names.")
    ] = "wbc5",
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; same inputs give the same manifest.")
    ] = 0,
    val: Annotated[
        float, typer.Option("--val", help="Fraction of each class for validation.")
    ] = 0.15,
    test: Annotated[
        float, typer.Option("--test", help="Fraction of each class for testing.")
    ] = 0.15,
) -> None:
    """Write a stratified, seeded, leakage-free train/val/test manifest.

    Byte-identical and near-duplicate images always share a split; duplicates labelled
    differently are excluded and listed in <out>.excluded.csv.
    """
    from leukoscope.classes import resolve_classes
    from leukoscope.data.split import SPLITS, split_folder, write_manifest

    wanted = resolve_classes(classes)
    with progress_bar("Hashing images") as tracker:
        result = split_folder(
            data_dir,
            wanted,
            seed=seed,
            val=val,
            test=test,
            on_total=tracker.set_total,
            on_progress=tracker.advance,
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


@data_app.command("resize", cls=Command)
def resize(
    manifest: Annotated[Path, typer.Argument(help="Split manifest CSV (data split).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the copy and its manifest.csv.")],
    size: Annotated[int, typer.Option("--size", min=16, help="Square side in pixels.")] = 224,
    splits: Annotated[
        str, typer.Option("--splits", help="Comma-separated splits.")
    ] = "train,val,test",
    fmt: Annotated[
        ImageFormat, typer.Option("--format", help="Image format of the copy.")
    ] = ImageFormat.WEBP,
    quality: Annotated[
        int, typer.Option("--quality", min=1, max=100, help="WebP/JPEG quality.")
    ] = 90,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Decoding worker processes.")
    ] = 2,
) -> None:
    """Write a resized copy of a manifest's images with a manifest of its own.

    Resized as training does, so a model trained on the copy (say, on a GPU machine the
    originals are too large to ship to) sees the same pixels, apart from lossy encoding.
    """
    from leukoscope.data.resize import resize_manifest

    wanted = tuple(s.strip() for s in splits.split(",") if s.strip())
    with progress_bar("Resizing images") as tracker:
        result = resize_manifest(
            manifest,
            out,
            size=size,
            splits=wanted,
            fmt=fmt.value,
            quality=quality,
            workers=workers,
            on_total=tracker.set_total,
            on_progress=tracker.advance,
        )
    console.print(f"Wrote {result.written} images and {result.manifest}")
    for path, reason in result.skipped:
        console.print(f"  skipped {path}: {reason}", highlight=False)


@data_app.command("download", cls=Command)
def download(
    name: Annotated[Dataset, typer.Argument(help="Dataset to fetch.")] = Dataset.PBC,
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Where to unpack (default: cache).")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected archive checksum.")
    ] = None,
) -> None:
    """Download the published dataset, verify it and unpack it into the user's cache."""
    from leukoscope.data.download import download_dataset

    with progress_bar(f"Downloading {name}") as tracker:
        root = download_dataset(
            name.value,
            dest=dest,
            expected_sha256=sha256,
            on_total=tracker.set_total,
            on_progress=tracker.advance,
        )
    console.print(f"{name} is in {root}; use it with LEUKOSCOPE_DATA={root}")
