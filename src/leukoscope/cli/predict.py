"""``leukoscope predict``: classify image files, folders or globs into a CSV or JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from leukoscope.cli.console import classify_inputs, console, print_unreadable
from leukoscope.cli.options import (
    Backend,
    BackendOption,
    BatchSize,
    FieldsOption,
    ModelDir,
    RenormaliseOption,
    Workers,
)


def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: ModelDir,
    out: Annotated[Path, typer.Option("--out", help="Predictions file to write: .csv or .json.")],
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    backend: BackendOption = Backend.AUTO,
    fields: FieldsOption = False,
    renormalise: RenormaliseOption = True,
) -> None:
    """Classify white-cell images: class, every class's probability, runner-up, uncertain flag.

    With --fields, one row per white cell found in the field images, with its box in the field
    (x_min, y_min, x_max, y_max and edge, 1 when the cell touches the image's edge). Unreadable
    files are listed in the output with their error and never stop the run.
    """
    from leukoscope.reports.predictions import check_output_suffix, summarise, write_predictions

    check_output_suffix(out)
    result = classify_inputs(
        model, backend, inputs, batch_size, workers, fields=fields, renormalise=renormalise
    )
    predictor, predictions, shift = result.predictor, result.predictions, result.shift
    write_predictions(
        predictor,
        predictions,
        out,
        shift=shift,
        boxes=result.boxes,
        renormalised=result.renormalised,
    )
    summary = summarise(predictions)
    table = Table(title=f"Predictions ({predictor.backend}, {predictor.precision})")
    table.add_column("class")
    table.add_column("white cells" if fields else "images", justify="right")
    for label in predictor.classes:
        table.add_row(label, str(summary["by_class"].get(label, 0)))
    table.add_row("[italic]uncertain (for review)[/]", str(summary["uncertain"]))
    console.print(table)
    if summary["fallback"]:
        console.print(
            f"The calls of {summary['fallback']} of the uncertain ones are its fallback "
            f"model's, {predictor.fallback_dir}",
            highlight=False,
        )
    if fields:
        console.print(f"Field images without a white cell: {result.fields_without_cells}")
    if shift is not None and shift.shifted:
        console.print(f"[bold red]Warning:[/] {shift.message}", highlight=False)
    print_unreadable(predictions)
    what = "white cell(s) and unreadable file(s)" if fields else "file(s)"
    console.print(f"Predictions for {len(predictions)} {what}: {out}")
