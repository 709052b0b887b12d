"""``leukoscope explain``: Grad-CAM overlays showing what drove each prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, find_images, print_skipped, progress_bar
from leukoscope.errors import LeukoscopeError


def explain(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the overlay PNGs.")],
    target: Annotated[
        str | None,
        typer.Option("--target", help="Class to explain (default: each image's predicted class)."),
    ] = None,
) -> None:
    """Write a Grad-CAM heatmap over each image as <name>_gradcam.png."""
    from leukoscope.inference.predictor import Predictor
    from leukoscope.reports.overlays import write_overlays

    paths = find_images(images)
    predictor = Predictor.load(model, backend="torch")
    with progress_bar("Explaining", total=len(paths)) as tracker:
        written, errors = write_overlays(
            predictor, paths, out, target=target, advance=tracker.advance
        )
    print_skipped(errors)
    if not written:
        raise LeukoscopeError(f"none of the {len(paths)} image file(s) could be read")
    console.print(f"{len(written)} overlay(s) in {out}")
