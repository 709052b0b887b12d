"""What leaves the database: a sample's cell table as CSV, and reviewed cells as a labelled
image folder (``<class>/<cell-id>.<ext>``, the original bytes) that ``leukoscope data split``
and ``leukoscope train`` read like any dataset."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from leukoscope.classes import canonical_class
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes
from leukoscope.service.store import Cell, Sample, cell_bytes, reviewed_cells

EXTENSIONS = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp",
    "GIF": "gif",
}  # fmt: skip
"""File name ending of every format uploads accept (``data.images.SUPPORTED_FORMATS``); the
folder scans of ``data split`` and ``train`` recognise each of them."""

CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell_text(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (file names come from clients)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(CSV_FORMULA_START) else text


def _state(cell: Cell) -> str:
    """The cell's class, else ``excluded`` or ``unidentified``."""
    return cell.label or ("excluded" if cell.exclusion else "unidentified")


def sample_csv(sample: Sample) -> str:
    """One row per cell: the model's call, the final call (a class, or excluded and why) and
    who made it, the call as signed off when amended since, comments, the sign-off, each
    class's probability, for a cell found in a field image the field, its box there, the edge
    flag and a possible duplicate, the sha256 of the model that made the call (after a
    renormalisation, the renormalised model's), and whether its fallback model made it
    instead (``fallback``)."""
    classes = list(sample.classes)
    header = [
        "sample_id", "sample_name", "cell_id", "position", "file_name", "sha256",
        "duplicate_of", "predicted", "confidence", "runner_up", "runner_up_probability",
        "uncertain", "label", "exclusion", "corrected_by", "corrected_at", "signed_call",
        "comments", "signed_off_by", "signed_off_at", *(f"p_{name}" for name in classes),
        "field", "x_min", "y_min", "x_max", "y_max", "edge", "possible_duplicate_of",
        "predicted_by_sha256", "fallback",
    ]  # fmt: skip
    field_names = {field.id: field.original_name for field in sample.fields}
    signoff = sample.signoff
    comments: dict[str, list[str]] = {}
    for comment in sample.comments:
        if comment.cell_id is not None:
            comments.setdefault(comment.cell_id, []).append(f"{comment.reviewer}: {comment.text}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for cell in sample.cells:
        prediction = cell.prediction
        last = cell.corrections[-1] if cell.corrections else None
        row = [
            sample.id, sample.name, cell.id, cell.position, cell.original_name, cell.sha256,
            cell.duplicate_of, prediction.label, f"{prediction.confidence:.4f}",
            prediction.runner_up, f"{prediction.runner_up_probability:.4f}",
            prediction.uncertain, _state(cell), cell.exclusion,
            last.reviewer if last else None, last.created_at.isoformat() if last else None,
            cell.signed_call if signoff else None, " | ".join(comments.get(cell.id, [])),
            signoff.reviewer if signoff else None,
            signoff.signed_at.isoformat() if signoff else None,
            *(f"{prediction.probabilities.get(name, 0.0):.4f}" for name in classes),
            field_names.get(cell.field_id or ""), cell.x_min, cell.y_min, cell.x_max,
            cell.y_max, cell.edge, cell.possible_duplicate_of, prediction.model_sha256,
            prediction.fallback,
        ]  # fmt: skip
        writer.writerow([_cell_text(value) for value in row])
    return buffer.getvalue()


EXCLUDED_CSV = "excluded.csv"
"""Beside the class folders: the reviewed cells left out, with why (not training images)."""


def _write_all(
    session: Session, signed_off: bool, write: Callable[[str, bytes], None]
) -> dict[str, int]:
    """Write every reviewed cell's original bytes into its class folder and, when some were
    excluded, ``excluded.csv`` listing them; return the count per class folder and per
    ``excluded: <category>``."""
    counts: Counter[str] = Counter()
    excluded = io.StringIO()
    writer = csv.writer(excluded, lineterminator="\n")
    writer.writerow(["cell_id", "sample_id", "sample_name", "file_name", "exclusion"])
    for cell, label, exclusion in reviewed_cells(session, signed_off=signed_off):
        if exclusion is not None:
            row = [cell.id, cell.sample_id, cell.sample.name, cell.original_name, exclusion]
            writer.writerow([_cell_text(value) for value in row])
            counts[f"excluded: {exclusion}"] += 1
            continue
        folder = canonical_class(str(label))
        if folder is None:
            raise LeukoscopeError(f"cell {cell.id}: label {label!r} is not a known cell class")
        extension = EXTENSIONS[cell.image_format]
        write(f"{folder}/{cell.id}.{extension}", cell_bytes(session, cell.id))
        counts[folder] += 1
    if any(key.startswith("excluded") for key in counts):
        write(EXCLUDED_CSV, excluded.getvalue().encode())
    return dict(sorted(counts.items()))


def export_reviewed_dir(session: Session, out: Path, *, signed_off: bool = False) -> dict[str, int]:
    """Write reviewed cells under ``out`` (new or empty, so no stale copy of a relabelled cell
    stays in its old class folder); return the count per class."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeukoscopeError(f"{out}: choose a new or empty folder for the export")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside ``out`` and renamed into place when complete: a failed export leaves no
    # partial folder that a rerun would then refuse.
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        counts = _write_all(
            session, signed_off, lambda rel, data: atomic_write_bytes(staging / rel, data)
        )
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def export_reviewed_zip(session: Session, *, signed_off: bool = False) -> IO[bytes]:
    """The same folder as a zip archive in a temporary file, positioned at its start."""
    # Returned open: the caller streams it, then closes it.
    handle = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)  # noqa: SIM115
    try:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
            _write_all(session, signed_off, archive.writestr)
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    return handle
