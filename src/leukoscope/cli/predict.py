"""``leukoscope predict``: classify image files, folders or globs into a CSV or JSON file."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from leukoscope.cli.app import app, console, err_console, progress_bar
from leukoscope.data.datasets import samples_from_paths
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.inference.predictor import BACKENDS, Prediction, Predictor

OUTPUT_SUFFIXES = (".csv", ".json")
SHOWN_ERRORS = 10

BACKEND_HELP = f"{', '.join(BACKENDS)}: auto uses ONNX Runtime when model.onnx is beside the model."


def load_predictor(model: Path, backend: str) -> Predictor:
    """Load the model, warning when it has no calibration (nothing will be flagged)."""
    predictor = Predictor.load(model, backend=backend)
    if predictor.abstainer is None:
        err_console.print(
            "[yellow]warning:[/] the model is not calibrated (run leukoscope calibrate), so no "
            "image will be flagged uncertain",
            highlight=False,
        )
    return predictor


def run_predictions(
    predictor: Predictor, inputs: Sequence[str | Path], batch_size: int, workers: int
) -> list[Prediction]:
    """Predict every image under ``inputs`` behind a progress bar."""
    paths = [sample.path for sample in samples_from_paths(inputs)]
    with progress_bar("Classifying", total=len(paths)) as (progress, task):
        return predictor.predict_paths(
            paths,
            batch_size=batch_size,
            workers=workers,
            on_progress=lambda n: progress.advance(task, n),
        )


def check_output_suffix(out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise LeukoscopeError(f"{out}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")


def predictions_csv(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """One row per image: the call, its flag and score, then each class's probability. An
    unreadable file's row holds only its source and error: no zeros that read as results."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = ["source", "label", "confidence", "uncertain", "score", "runner_up"]
    header = [*fields, "runner_up_probability", *(f"p_{c}" for c in classes), "error"]
    writer.writerow(header)
    for p in predictions:
        if p.error is not None:
            writer.writerow([p.source, *[""] * (len(header) - 2), p.error])
            continue
        writer.writerow(
            [
                p.source,
                p.label,
                f"{p.confidence:.6f}",
                str(p.uncertain).lower(),
                f"{p.score:.6f}",
                p.runner_up or "",
                f"{p.runner_up_probability:.6f}",
                *(f"{p.probabilities[c]:.6f}" for c in classes),
                "",
            ]
        )
    return buffer.getvalue()


def summarise(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Counts of images, unreadable files, flagged images and confident calls per class."""
    return {
        "images": len(predictions),
        "unreadable": sum(p.error is not None for p in predictions),
        "uncertain": sum(p.uncertain and p.error is None for p in predictions),
        "by_class": dict(
            Counter(p.label for p in predictions if p.error is None and not p.uncertain)
        ),
    }


def write_predictions(predictor: Predictor, predictions: Sequence[Prediction], out: Path) -> None:
    """Write the predictions atomically as CSV or JSON (by the file's suffix)."""
    if out.suffix.lower() == ".csv":
        atomic_write_text(out, predictions_csv(predictions, predictor.classes))
        return
    atomic_write_json(
        out,
        {
            "model": predictor.card["arch"],
            "backend": predictor.backend,
            "classes": list(predictor.classes),
            "calibrated": predictor.abstainer is not None,
            "summary": summarise(predictions),
            "predictions": [p.to_dict() for p in predictions],
        },
    )


def print_unreadable(predictions: Sequence[Prediction]) -> None:
    """List the files that could not be read (the first few, then a count)."""
    errors = [p.error for p in predictions if p.error is not None]
    if not errors:
        return
    console.print(f"[yellow]{len(errors)} unreadable file(s) skipped:[/]")
    for message in errors[:SHOWN_ERRORS]:
        console.print(f"  {message}", highlight=False, soft_wrap=True)
    if len(errors) > SHOWN_ERRORS:
        console.print(f"  ... and {len(errors) - SHOWN_ERRORS} more (all listed in the output)")


@app.command("predict")
def predict(
    inputs: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: Path = typer.Option(..., "--model", help="Model directory (or its .onnx export)."),
    out: Path = typer.Option(..., "--out", help="Predictions file to write: .csv or .json."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model call."),
    workers: int = typer.Option(2, "--workers", min=0, help="Image-decoding processes."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Classify white-cell images: class, every class's probability, runner-up, uncertain flag.

    Unreadable files are listed in the output with their error and never stop the run.
    """
    check_output_suffix(out)
    predictor = load_predictor(model, backend)
    predictions = run_predictions(predictor, inputs, batch_size, workers)
    write_predictions(predictor, predictions, out)
    summary = summarise(predictions)
    table = Table(title=f"Predictions ({predictor.backend})")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label in predictor.classes:
        table.add_row(label, str(summary["by_class"].get(label, 0)))
    table.add_row("[italic]uncertain (for review)[/]", str(summary["uncertain"]))
    console.print(table)
    print_unreadable(predictions)
    console.print(f"Predictions for {len(predictions)} file(s): {out}")
