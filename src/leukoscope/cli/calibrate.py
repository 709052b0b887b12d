"""``leukoscope calibrate`` and ``leukoscope ood-check``: trustworthy confidences and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from leukoscope.cli.console import console, print_skipped, progress_bar
from leukoscope.cli.options import (
    VIEWS_HELP,
    Backend,
    BackendOption,
    BatchSize,
    Confidence,
    Split,
    Views,
    Workers,
)
from leukoscope.data import default_dataset_dir
from leukoscope.errors import LeukoscopeError


def calibrate_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    manifest: Annotated[
        Path, typer.Option("--manifest", help="Split manifest the model was trained on.")
    ],
    split: Annotated[Split, typer.Option("--split", help="Split to fit on.")] = Split.VAL,
    target_coverage: Annotated[
        float,
        typer.Option(
            "--target-coverage", min=0.01, max=1.0, help="Fraction of cells left unflagged."
        ),
    ] = 0.95,
    confidence: Annotated[
        Confidence, typer.Option("--confidence", help="Confidence score.")
    ] = Confidence.MSP,
    fit_per_class: Annotated[
        int,
        typer.Option(
            "--fit-per-class", min=2, help="Training images per class for the feature model."
        ),
    ] = 300,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default: the model's).")
    ] = None,
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    views: Annotated[
        Views | None, typer.Option("--views", help=f"{VIEWS_HELP} Default: keep the card's.")
    ] = None,
    extra_views_below: Annotated[
        float | None,
        typer.Option(
            "--extra-views-below",
            min=0.0,
            max=1.0,
            help="With test-time views: compute the other views only for images whose first "
            "view's calibrated confidence is below this (e.g. 0.98; benchmarks/views.py "
            "measures the choice). Default: keep the card's.",
        ),
    ] = None,
    renormalised_only: Annotated[
        bool,
        typer.Option(
            "--renormalised-only",
            help="Keep the calibration; only fit the abstention rule of the model renormalised "
            "on its own cells, which adapt --unlabelled uses (models with BatchNorm layers).",
        ),
    ] = False,
) -> None:
    """Fit temperature scaling and the abstention threshold; store them in the model card.

    Also writes calibration.md/.json with a reliability diagram and the accuracy-coverage curve.
    A model with BatchNorm layers also gets the abstention rule of its renormalised self.
    """
    from leukoscope.evaluation.calibrate import calibrate, calibrate_renormalised

    if renormalised_only:
        with console.status("Renormalising on training cells and fitting the abstention rule"):
            section = calibrate_renormalised(model, manifest, split=split)
        _print_renormalised(section)
        return
    with progress_bar("Calibrating") as tracker:
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
            views=None if views is None else int(views),
            extra_views_below=extra_views_below,
            on_total=tracker.set_total,
            on_progress=tracker.advance,
        )
    a = metrics["abstention"]
    console.print(
        f"Temperature {metrics['temperature']:.3f}: expected calibration error "
        f"{metrics['ece_before']:.4f} -> {metrics['ece_after']:.4f} on {metrics['n']} {split} "
        "images"
    )
    kept = "none" if a["accuracy_kept"] is None else f"{a['accuracy_kept']:.2%}"
    console.print(
        f"Abstention threshold {a['threshold']:.4f}: {a['coverage']:.1%} of {split} images kept, "
        f"accuracy {kept} (all: {metrics['accuracy']:.2%})"
    )
    print_skipped([item["error"] for item in metrics["unreadable"]])
    if "renormalised_abstention" in metrics:
        _print_renormalised(metrics["renormalised_abstention"])
    console.print(
        f"Report: {(out or (model if model.is_dir() else model.parent)) / 'calibration.md'}"
    )


def _print_renormalised(section: dict[str, Any]) -> None:
    if "error" in section:
        console.print(
            f"[yellow]No abstention rule for renormalised models[/] (adapt --unlabelled keeps "
            f"this one): {section['error']}",
            soft_wrap=True,
        )
        return
    cells = " and ".join(f"{n} {split}" for split, n in section["cells"].items())
    console.print(
        f"Abstention rule of the renormalised model (for adapt --unlabelled): threshold "
        f"{section['threshold']:.4f}, fitted on {cells} cells"
    )
    print_skipped(section["unreadable"])


def ood_check(
    model: Annotated[Path, typer.Option("--model", help="Calibrated model directory.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="PBC-style folder for the cell classes the model lacks "
            "(default: $LEUKOSCOPE_DATA or ../shared/data/pbc, skipped when absent).",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Images per kind.")] = 50,
    out: Annotated[Path | None, typer.Option("--out", help="Write the rates as JSON here.")] = None,
    backend: BackendOption = Backend.AUTO,
) -> None:
    """How often inputs the model does not know are flagged uncertain.

    The inputs: noise, blank fields, photos, and cell types the model has no class for.
    """
    from leukoscope.evaluation.ood import (
        ood_catch_rates,
        synthetic_ood_images,
        unknown_class_images,
    )
    from leukoscope.fileio import atomic_write_json
    from leukoscope.inference.predictor import Predictor

    predictor = Predictor.load(model, backend=backend)
    abstention = predictor.card.abstention
    if predictor.abstainer is None or abstention is None:
        raise LeukoscopeError(f"{model}: not calibrated; run leukoscope calibrate first")
    kinds = synthetic_ood_images(n)
    root = data or default_dataset_dir()
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
    target = abstention.target_coverage
    console.print(f"(In-distribution cells: {1 - target:.0%} flagged by design on validation.)")
    if out is not None:
        atomic_write_json(out, {"model": str(model), "target_coverage": target, "rates": rates})
        console.print(f"Rates: {out}")
