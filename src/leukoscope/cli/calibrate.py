"""``leukoscope calibrate`` and ``leukoscope ood-check``: trustworthy confidences and flags."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from leukoscope.cli.app import app, console, progress_bar
from leukoscope.cli.data import default_data_dir
from leukoscope.cli.predict import BACKEND_HELP
from leukoscope.data.split import SPLITS
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json
from leukoscope.inference.abstention import (
    CONFIDENCE_SCORES,
    DEFAULT_CONFIDENCE,
    ood_catch_rates,
    synthetic_ood_images,
    unknown_class_images,
)
from leukoscope.inference.calibration import calibrate
from leukoscope.inference.predictor import VIEW_COUNTS, Predictor

VIEWS_HELP = (
    f"Test-time views ({', '.join(map(str, VIEW_COUNTS))}): predict from the average of the "
    "image turned by 90-degree steps (8: and mirrored); that many times slower. Stored in the "
    "model card. Default: keep the card's."
)


@app.command("calibrate")
def calibrate_command(
    model: Path = typer.Option(..., "--model", help="Model directory."),
    manifest: Path = typer.Option(
        ..., "--manifest", help="Split manifest the model was trained on."
    ),
    split: str = typer.Option("val", "--split", help=f"Split to fit on ({', '.join(SPLITS)})."),
    target_coverage: float = typer.Option(
        0.95, "--target-coverage", min=0.01, max=1.0, help="Fraction of cells left unflagged."
    ),
    confidence: str = typer.Option(
        DEFAULT_CONFIDENCE,
        "--confidence",
        help=f"Confidence score: {', '.join(CONFIDENCE_SCORES)}.",
    ),
    fit_per_class: int = typer.Option(
        300, "--fit-per-class", min=2, help="Training images per class for the feature model."
    ),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: the model's)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model call."),
    workers: int = typer.Option(2, "--workers", min=0, help="Image-decoding processes."),
    views: int | None = typer.Option(None, "--views", help=VIEWS_HELP),
) -> None:
    """Fit temperature scaling and the abstention threshold; store them in the model card.

    Also writes calibration.md/.json with a reliability diagram and the accuracy-coverage curve.
    """
    with progress_bar("Calibrating") as (progress, task):
        metrics = calibrate(
            model,
            manifest,
            split=split,
            target_coverage=target_coverage,
            confidence=confidence,
            fit_per_class=fit_per_class,
            out_dir=out,
            batch_size=batch_size,
            workers=workers,
            views=views,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    a = metrics["abstention"]
    console.print(
        f"Temperature {metrics['temperature']:.3f}: expected calibration error "
        f"{metrics['ece_before']:.4f} -> {metrics['ece_after']:.4f} on {metrics['n']} {split} "
        "images"
    )
    console.print(
        f"Abstention threshold {a['threshold']:.4f}: {a['coverage']:.1%} of {split} images kept, "
        f"accuracy {a['accuracy_kept']:.2%} (all: {metrics['accuracy']:.2%})"
    )
    for item in metrics["unreadable"]:
        console.print(f"[yellow]skipped[/] {item['error']}", highlight=False, soft_wrap=True)
    console.print(
        f"Report: {(out or (model if model.is_dir() else model.parent)) / 'calibration.md'}"
    )


@app.command("ood-check")
def ood_check(
    model: Path = typer.Option(..., "--model", help="Calibrated model directory."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="PBC-style folder for the cell classes the model lacks "
        "(default: $LEUKOSCOPE_DATA or ../shared/data/pbc, skipped when absent).",
    ),
    n: int = typer.Option(50, "--n", min=1, help="Images per kind."),
    out: Path | None = typer.Option(None, "--out", help="Write the rates as JSON here."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """How often inputs the model does not know are flagged uncertain: noise, blank fields,
    photos, and cell types it has no class for."""
    predictor = Predictor.load(model, backend=backend)
    if predictor.abstainer is None:
        raise LeukoscopeError(f"{model}: not calibrated; run leukoscope calibrate first")
    kinds = synthetic_ood_images(n)
    root = data or default_data_dir()
    if root.is_dir():
        kinds |= unknown_class_images(root, predictor.classes, n)
    elif data is not None:
        raise LeukoscopeError(f"{data}: no such folder")
    rates = ood_catch_rates(predictor, kinds)
    table = Table(title=f"Unfamiliar inputs flagged uncertain ({predictor.backend})")
    for column in ("kind", "images", "flagged", "rate"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, r in rates.items():
        table.add_row(kind, str(r["n"]), str(r["caught"]), f"{r['rate']:.0%}")
    console.print(table)
    target = predictor.card["abstention"]["target_coverage"]
    console.print(f"(In-distribution cells: {1 - target:.0%} flagged by design on validation.)")
    if out is not None:
        atomic_write_json(out, {"model": str(model), "target_coverage": target, "rates": rates})
        console.print(f"Rates: {out}")
