"""``leukoscope locate``: find every white cell in field images and write their boxes to a CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from leukoscope.cli.console import console, progress_bar
from leukoscope.errors import LeukoscopeError

if TYPE_CHECKING:
    from leukoscope.cells.fields import CellBox

COLUMNS = ("source", "x_min", "y_min", "x_max", "y_max", "score", "edge", "error")
SHOWN_ERRORS = 10


def box_rows(source: str, boxes: Sequence[CellBox]) -> list[dict[str, object]]:
    """The CSV rows of one image's white cells."""
    return [
        {
            "source": source,
            "x_min": box.x_min,
            "y_min": box.y_min,
            "x_max": box.x_max,
            "y_max": box.y_max,
            "score": f"{box.score:.4f}",
            "edge": int(box.edge),
        }
        for box in boxes
    ]


def boxes_csv(rows: Iterable[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def locate(
    inputs: Annotated[
        list[str], typer.Argument(help="Field images: files, folders or glob patterns.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Boxes file to write (.csv).")],
) -> None:
    """Find every white cell in field images (microscope photos of a smear).

    Writes one row per cell: source, x_min, y_min, x_max, y_max (pixels of the image, maxima
    exclusive), score (0-1) and edge (1 when the cell touches the image's edge and may be cut).
    An unreadable file gets one row with its error and never stops the run; an image without
    white cells gets no row.
    """
    import numpy as np

    from leukoscope.cells.fields import locate_cells
    from leukoscope.data.datasets import samples_from_paths
    from leukoscope.data.images import decode_rgb
    from leukoscope.errors import ImageDecodeError
    from leukoscope.fileio import atomic_write_text

    if out.suffix.lower() != ".csv":
        raise LeukoscopeError(f"{out}: the output must end in .csv")
    paths = [sample.path for sample in samples_from_paths(inputs)]
    rows: list[dict[str, object]] = []
    errors: list[str] = []
    without_cells = 0
    with progress_bar("Locating", total=len(paths)) as tracker:
        for path in paths:
            tracker.advance(1)
            try:
                rgb = np.asarray(decode_rgb(path))
            except ImageDecodeError as exc:
                errors.append(str(exc))
                rows.append({"source": str(path), "error": str(exc)})
                continue
            found = box_rows(str(path), locate_cells(rgb))
            without_cells += not found
            rows.extend(found)
    atomic_write_text(out, boxes_csv(rows))
    table = Table(title="White cells located")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("images", str(len(paths)))
    table.add_row("white cells", str(sum(1 for row in rows if "x_min" in row)))
    table.add_row("of them at the edge", str(sum(1 for row in rows if row.get("edge") == 1)))
    table.add_row("images without a white cell", str(without_cells))
    table.add_row("unreadable files", str(len(errors)))
    console.print(table)
    for message in errors[:SHOWN_ERRORS]:
        console.print(f"  [yellow]skipped:[/] {message}", highlight=False, soft_wrap=True)
    if len(errors) > SHOWN_ERRORS:
        console.print(f"  ... and {len(errors) - SHOWN_ERRORS} more (all listed in the output)")
    console.print(f"Boxes: {out}")
