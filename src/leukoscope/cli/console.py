"""Consoles, progress bars and log output shared by the commands.

The library reports progress through plain callbacks (``on_total(n)``, ``advance(n)``) or a
:data:`leukoscope.progress.TrackerFactory`; the adapters here draw them as Rich progress bars
on stderr, so that stdout holds only results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from leukoscope.errors import LeukoscopeError
from leukoscope.progress import Tracker

if TYPE_CHECKING:
    from leukoscope.cells.crops import Cuts
    from leukoscope.cells.fields import CellBox
    from leukoscope.data.preprocess import ScaleEstimate
    from leukoscope.inference.predictor import Prediction, Predictor
    from leukoscope.inference.shift import ShiftCheck

console = Console()
err_console = Console(stderr=True)

SHOWN_ERRORS = 10


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Tracker]:
    """A Rich progress bar with count, elapsed and remaining time (on stderr).

    Returns
    -------
    Tracker
        ``set_total(n)`` for a total known only later, ``advance(n)`` per finished item.
    """
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield Tracker(
            set_total=lambda n: progress.update(task, total=n),
            advance=lambda n: progress.advance(task, n),
        )


@contextmanager
def rich_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A :func:`progress_bar` as the trainer's ``ProgressFactory`` (yields ``advance(n)``)."""
    with progress_bar(description, total) as tracker:
        yield tracker.advance


def log_to_console() -> None:
    """Show the library's INFO log lines (epoch summaries, skipped files) on stderr."""
    from rich.logging import RichHandler

    root = logging.getLogger("leukoscope")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=err_console, show_path=False, markup=False))
    root.setLevel(logging.INFO)


def warn(message: str) -> None:
    """One yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def print_skipped(messages: Sequence[str]) -> None:
    """One line per file that was skipped, with its reason."""
    for message in messages:
        console.print(f"[yellow]skipped[/] {message}", highlight=False, soft_wrap=True)


def print_audit(report: dict[str, Any]) -> None:
    """The audit as a per-class table followed by the findings."""
    from leukoscope.data.audit import summary_lines

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


def load_predictor(model: Path, backend: str, files: int | None = None) -> Predictor:
    """Load the model for a job of ``files`` cell images (None: unknown), warning when it has
    no calibration (nothing will be flagged)."""
    from leukoscope.inference.predictor import Predictor

    predictor = Predictor.load(model, backend=backend, files=files)
    if predictor.abstainer is None:
        warn(
            "the model is not calibrated (run leukoscope calibrate), so no image will be "
            "flagged uncertain"
        )
    return predictor


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files under ``inputs`` (files, folders, globs), a line for each link that
    was not followed; an error when there is none."""
    from leukoscope.data.datasets import samples_from_paths
    from leukoscope.data.images import IMAGE_EXTENSIONS

    skipped: list[str] = []
    paths = [sample.path for sample in samples_from_paths(inputs, skipped)]
    print_skipped(skipped)
    if not paths:
        where = ", ".join(str(item) for item in inputs)
        endings = " ".join(sorted(IMAGE_EXTENSIONS))
        raise LeukoscopeError(f"{where}: no image files found (looked for {endings})")
    return paths


def require_some_read(predictions: Sequence[Prediction]) -> None:
    """Fail, listing why, when not one of the images could be read."""
    if predictions and all(p.error is not None for p in predictions):
        print_unreadable(predictions)
        raise LeukoscopeError(f"none of the {len(predictions)} image file(s) could be read")


def classify(
    predictor: Predictor, paths: Sequence[Path], batch_size: int, workers: int
) -> tuple[list[Prediction], ScaleEstimate]:
    """Predict the cell images ``paths``, one sample, behind a progress bar; say when the
    sample is rescaled to the training images' magnification."""
    scale = predictor.estimate_scale(paths)
    if scale.factor != 1.0:
        console.print(f"[bold]Magnification:[/] {scale.message}", highlight=False)
    with progress_bar("Classifying", total=len(paths)) as tracker:
        predictions = predictor.predict_paths(
            paths,
            batch_size=batch_size,
            workers=workers,
            on_progress=tracker.advance,
            scale=scale,
        )
    require_some_read(predictions)
    return predictions, scale


@dataclass
class Classified:
    """What ``predict`` and ``differential`` classified: one prediction per cell image, or per
    white cell found in field images with its box, and the sample's shift check."""

    predictor: Predictor
    """What classified them: the loaded model, or that model renormalised on the sample."""
    predictions: list[Prediction]
    shift: ShiftCheck | None
    magnification: ScaleEstimate | None = None
    """How cell images were rescaled (field cells are cut out at the field's own scale)."""
    boxes: list[CellBox | None] | None = None
    cuts: dict[str, Cuts] | None = None
    """Where the fields' cells were cut (by path), so that a second pass need not locate them."""
    fields_without_cells: int = 0
    renormalised: int = 0
    """Cells of this sample the model was renormalised on (0: used as loaded)."""


def classify_inputs(
    model: Path,
    backend: str,
    inputs: Sequence[str | Path],
    batch_size: int,
    workers: int,
    *,
    fields: bool,
    renormalise: bool = True,
) -> Classified:
    """:func:`classify_paths` the image files under ``inputs`` with ``model``, loaded once
    they are found (:func:`load_predictor`: their number, for cell images, picks the engine).
    """
    paths = find_images(inputs)
    predictor = load_predictor(model, backend, None if fields else len(paths))
    return classify_paths(
        predictor, paths, batch_size, workers, fields=fields, renormalise=renormalise
    )


def classify_paths(
    predictor: Predictor,
    paths: Sequence[Path],
    batch_size: int,
    workers: int,
    *,
    fields: bool,
    renormalise: bool = True,
) -> Classified:
    """:func:`classify` the cell images ``paths``, or with ``fields`` find, cut out and
    classify every white cell of these field images (see :mod:`leukoscope.inference.fields`).

    With ``renormalise``, a sample that looks unlike the training data as a whole (the shift
    check) is classified again by the model renormalised on its cells, when it can be
    (:func:`~leukoscope.inference.shift.renormalised_or_why`): on another lab's rapid stain
    this took the 5-class EfficientNet from 13% to 67%, and it never touches a sample that
    looks like the training data, on which it would cost a point.
    """
    first = classified(predictor, paths, batch_size, workers, fields=fields)
    if not renormalise or first.shift is None or not first.shift.shifted:
        return first
    return renormalised_classification(
        first, first.shift, paths, batch_size, workers, fields=fields
    )


def classified(
    predictor: Predictor,
    paths: Sequence[Path],
    batch_size: int,
    workers: int,
    *,
    fields: bool,
    cuts: dict[str, Cuts] | None = None,
) -> Classified:
    """The cell images ``paths``, or the white cells of the field images ``paths``, classified
    once by ``predictor`` as one sample, with its shift check (fields with ``cuts`` are not
    located again)."""
    if not fields:
        predictions, magnification = classify(predictor, paths, batch_size, workers)
        return Classified(predictor, predictions, predictor.check_shift(predictions), magnification)
    from leukoscope.inference.fields import classify_field_paths, field_cuts, field_shift

    with progress_bar("Locating and classifying", total=len(paths)) as tracker:
        cells = classify_field_paths(predictor, paths, on_progress=tracker.advance, cuts=cuts)
    predictions = [cell.prediction for cell in cells]
    require_some_read(predictions)
    with_cells = {p.source for p in predictions}
    return Classified(
        predictor,
        predictions,
        field_shift(predictor, cells),
        boxes=[cell.box for cell in cells],
        cuts=field_cuts(cells),
        fields_without_cells=sum(str(path) not in with_cells for path in paths),
    )


def renormalised_classification(
    first: Classified,
    shift: ShiftCheck,
    paths: Sequence[Path],
    batch_size: int,
    workers: int,
    *,
    fields: bool,
) -> Classified:
    """A sample ``first`` classified, that ``shift`` found shifted, classified again by its
    model renormalised on its cells; or ``first`` (with the reason on the console) when the
    model cannot be renormalised."""
    from leukoscope.data.preprocess import UNSCALED
    from leukoscope.inference.shift import renormalised_or_why

    predictor = first.predictor

    def announce(cells: int) -> None:
        console.print(
            f"[bold]Renormalising:[/] {shift.uncertain} of {shift.cells} cells are flagged "
            f"uncertain (about {shift.expected_share:.0%} expected); re-estimating the "
            f"model's normalisation statistics on {cells} of the sample's cells and "
            "classifying them again (--no-renormalise: the model as trained).",
            highlight=False,
        )

    read = [p.source for p in first.predictions if p.error is None]  # a field's once per cell
    readable = list(dict.fromkeys(read))
    scale = first.magnification or UNSCALED

    def make() -> Predictor:
        from leukoscope.training.adapt import renormalised_for_fields, renormalised_for_sample

        if fields:
            return renormalised_for_fields(predictor, readable, first.cuts)
        return renormalised_for_sample(predictor, readable, scale)

    renormalised = renormalised_or_why(predictor, len(read), make, announce)
    if isinstance(renormalised, str):
        console.print(f"[bold]Not renormalised:[/] {renormalised}.", highlight=False)
        return first
    try:
        again = classified(renormalised, paths, batch_size, workers, fields=fields, cuts=first.cuts)
    except LeukoscopeError as exc:  # e.g. the files went away since: keep the first calls
        console.print(
            f"[bold]Not renormalised:[/] classifying again failed: {exc}.", highlight=False
        )
        return first
    adaptation = renormalised.card.adaptation
    again.renormalised = adaptation.renormalised if adaptation else 0
    return again
