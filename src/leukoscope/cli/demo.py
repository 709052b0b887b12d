"""``leukoscope demo``: the README's main job on a sample of a dataset (``leukoscope.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, load_predictor, print_audit, progress_bar
from leukoscope.cli.options import DataOption
from leukoscope.data import default_dataset_dir
from leukoscope.demo import DEFAULT_MODEL, has_released_model


def demo(
    data: DataOption = None,
    model: Annotated[
        Path,
        typer.Option("--model", help="Released model; when absent, the sample is audited."),
    ] = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="Where to write the report.")] = Path(
        "runs/demo"
    ),
    sample: Annotated[int, typer.Option("--sample", min=1, help="Images per class.")] = 25,
) -> None:
    """Classify a sample of the dataset with a released model and write a short report."""
    from leukoscope.demo import audit_sample, classify_sample

    root = data or default_dataset_dir()
    if has_released_model(model):
        predictor = load_predictor(model, "auto")
        with progress_bar("Classifying") as tracker:
            lines = classify_sample(
                predictor,
                model,
                root,
                sample,
                out,
                on_total=tracker.set_total,
                on_progress=tracker.advance,
            )
        console.print("\n".join(lines[:5]), highlight=False)
    else:
        console.print(f"No released model at {model}: auditing the sample instead.")
        with progress_bar("Auditing images") as tracker:
            report = audit_sample(
                root, sample, out, on_total=tracker.set_total, on_progress=tracker.advance
            )
        print_audit(report)
    console.print(f"Report: {out / 'report.md'}")
