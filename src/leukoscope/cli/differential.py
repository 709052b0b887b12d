"""``leukoscope differential``: the white-cell differential of one sample (a folder of cells)."""

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
    ReportFormat,
    Workers,
)
from leukoscope.errors import LeukoscopeError


def differential(
    folder: Annotated[Path, typer.Argument(help="Folder of cell images from one sample (smear).")],
    model: ModelDir,
    out: Annotated[Path, typer.Option("--out", help="Folder for the report.")],
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Report format.")] = ReportFormat.MD,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    backend: BackendOption = Backend.AUTO,
    fields: FieldsOption = False,
    renormalise: RenormaliseOption = True,
) -> None:
    """Count the cells of one sample per class, with 95% intervals, adult reference ranges and
    screening flags.

    Writes differential.json, differential.md or .html, and cells.csv (every cell's call; with
    --fields, each white cell found in the folder's field images, with its field and box).
    Cells flagged uncertain, and with --fields cells cut by an image's edge, are counted apart
    for review.
    """
    from leukoscope.reports.differential import (
        DISCLAIMER,
        TABLE_HEADER,
        flag_lines,
        table_rows,
        write_sample_report,
    )

    if not folder.is_dir():
        raise LeukoscopeError(f"{folder}: not a folder")
    result = classify_inputs(
        model, backend, [folder], batch_size, workers, fields=fields, renormalise=renormalise
    )
    predictor, predictions, shift = result.predictor, result.predictions, result.shift
    report, report_path = write_sample_report(
        predictions,
        predictor.classes,
        out,
        sample=folder,
        model=model,
        fmt=fmt.value,
        shift=shift,
        magnification=result.magnification,
        boxes=result.boxes,
        renormalised=result.renormalised,
    )
    if shift is not None and shift.shifted:
        console.print(f"[bold red]Warning:[/] {shift.message}", highlight=False)
    table = Table(title=f"Differential of {folder} ({report['white_cells_counted']} white cells)")
    for column in TABLE_HEADER:
        table.add_column(column, justify="right" if "%" in column or column == "count" else "left")
    for cells_text in table_rows(report):
        table.add_row(*cells_text)
    console.print(table)
    console.print(f"For review (not counted): {report['for_review']['total']}")
    if fields:
        console.print(f"Field images without a white cell: {result.fields_without_cells}")
    for line in flag_lines(report):
        console.print(f"[bold yellow]flag:[/] {line}", highlight=False)
    print_unreadable(predictions)
    console.print(f"[bold]{DISCLAIMER}[/]", soft_wrap=True)
    console.print(f"Report: {report_path}")
