"""``leukoscope differential``: the white-cell differential of one sample (a folder of cells)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from leukoscope.cli.app import app, console
from leukoscope.cli.predict import (
    BACKEND_HELP,
    load_predictor,
    predictions_csv,
    print_unreadable,
    run_predictions,
)
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.reports.differential import (
    DISCLAIMER,
    TABLE_HEADER,
    CellCall,
    compute_differential,
    render_html,
    render_markdown,
    table_rows,
)

RENDERERS = {"md": render_markdown, "html": render_html}


@app.command("differential")
def differential(
    folder: Path = typer.Argument(..., help="Folder of cell images from one sample (smear)."),
    model: Path = typer.Option(..., "--model", help="Model directory (or its .onnx export)."),
    out: Path = typer.Option(..., "--out", help="Folder for the report."),
    fmt: str = typer.Option("md", "--format", help="Report format: md or html."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model call."),
    workers: int = typer.Option(2, "--workers", min=0, help="Image-decoding processes."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Count the cells of one sample per class, with 95% intervals, adult reference ranges and
    screening flags.

    Writes differential.json, differential.md or .html, and cells.csv (every cell's call).
    Cells flagged uncertain are counted apart for review.
    """
    if fmt not in RENDERERS:
        raise LeukoscopeError(f"unknown format {fmt!r}: use {' or '.join(RENDERERS)}")
    if not folder.is_dir():
        raise LeukoscopeError(f"{folder}: not a folder")
    predictor = load_predictor(model, backend)
    predictions = run_predictions(predictor, [folder], batch_size, workers)
    cells = [CellCall(p.label, p.uncertain) for p in predictions if p.label is not None]
    report = compute_differential(cells, predictor.classes) | {
        "sample": str(folder),
        "model": str(model),
        "unreadable": [{"source": p.source, "error": p.error} for p in predictions if p.error],
    }
    atomic_write_text(out / "cells.csv", predictions_csv(predictions, predictor.classes))
    atomic_write_json(out / "differential.json", report)
    report_path = out / f"differential.{fmt}"
    atomic_write_text(report_path, RENDERERS[fmt](report))

    table = Table(title=f"Differential of {folder} ({report['white_cells_counted']} white cells)")
    for column in TABLE_HEADER:
        table.add_column(column, justify="right" if "%" in column or column == "count" else "left")
    for cells_text in table_rows(report):
        table.add_row(*cells_text)
    console.print(table)
    console.print(f"For review (not counted): {report['for_review']['total']}")
    for flag in report["flags"]:
        console.print(f"[bold yellow]flag:[/] {flag['text']}", highlight=False)
    print_unreadable(predictions)
    console.print(f"[bold]{DISCLAIMER}[/]", soft_wrap=True)
    console.print(f"Report: {report_path}")
