"""``leukoscope explain``: Grad-CAM overlays showing what drove each prediction."""

from __future__ import annotations

from pathlib import Path

import typer

from leukoscope.cli.app import app, console, progress_bar
from leukoscope.data.datasets import samples_from_paths
from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError
from leukoscope.inference.explain import gradcam_overlay, save_png
from leukoscope.inference.predictor import Predictor


@app.command("explain")
def explain(
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: Path = typer.Option(..., "--model", help="Model directory."),
    out: Path = typer.Option(..., "--out", help="Folder for the overlay PNGs."),
    target: str | None = typer.Option(
        None, "--target", help="Class to explain (default: each image's predicted class)."
    ),
) -> None:
    """Write a Grad-CAM heatmap over each image as <name>_gradcam.png."""
    predictor = Predictor.load(model, backend="torch")
    paths = [sample.path for sample in samples_from_paths(images)]
    used: set[str] = set()
    errors: list[str] = []
    with progress_bar("Explaining", total=len(paths)) as (progress, task):
        for path in paths:
            try:
                image = decode_rgb(path)
            except ImageDecodeError as exc:
                errors.append(str(exc))
            else:
                name = _unique(f"{path.stem}_gradcam", used)
                save_png(gradcam_overlay(predictor, image, target), out / f"{name}.png")
            progress.advance(task)
    for message in errors:
        console.print(f"[yellow]skipped[/] {message}", highlight=False, soft_wrap=True)
    console.print(f"{len(paths) - len(errors)} overlay(s) in {out}")


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when images from different folders share it."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate
