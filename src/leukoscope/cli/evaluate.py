"""``leukoscope evaluate``: metrics, report and confusion matrix of a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from leukoscope.cli.console import console, progress_bar
from leukoscope.cli.options import Backend, BatchSize, RenormaliseOption, Split
from leukoscope.errors import LeukoscopeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from leukoscope.data.datasets import Sample

BOOTSTRAP_RESAMPLES = 1000
"""``leukoscope.evaluation.metrics.BOOTSTRAP_RESAMPLES``, the default of ``--bootstrap``."""


def evaluate_command(
    model: Annotated[
        Path, typer.Option("--model", help="Model directory or its model.safetensors.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for metrics.json, report.md and figures.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Folder of class folders (any spelling, any subset of classes)."
        ),
    ] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Split manifest CSV.")] = None,
    split: Annotated[
        Split, typer.Option("--split", help="Manifest split to evaluate.")
    ] = Split.TEST,
    batch_size: BatchSize = 64,
    bootstrap: Annotated[
        int,
        typer.Option("--bootstrap", min=10, help="Bootstrap resamples for the 95% CIs."),
    ] = BOOTSTRAP_RESAMPLES,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    timing_runs: Annotated[
        int, typer.Option("--timing-runs", min=0, help="Batch-1 latency runs (0 skips timing).")
    ] = 30,
    mistakes: Annotated[
        int,
        typer.Option("--mistakes", min=0, help="List this many most confident mistakes (0: none)."),
    ] = 12,
    heatmaps: Annotated[
        bool,
        typer.Option("--heatmaps/--no-heatmaps", help="Draw Grad-CAM heatmaps of those mistakes."),
    ] = True,
    backend: Annotated[
        Backend,
        typer.Option("--backend", help="Runtime; --model may name an .onnx export."),
    ] = Backend.TORCH,
    renormalise: RenormaliseOption = True,
) -> None:
    """Score a model on labelled images (one of --data or --manifest).

    Accuracy, macro-F1, per-class table, CIs, speed, calibration, accuracy-coverage and the
    most confident mistakes with Grad-CAM heatmaps.
    """
    from leukoscope.data.datasets import read_manifest, samples_from_folder
    from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
    from leukoscope.evaluation.report import classification_table, sample_notes

    if (data is None) == (manifest is None):
        raise LeukoscopeError("give exactly one of --data DIR or --manifest M.csv")

    def samples_for(classes: Sequence[str]) -> list[Sample]:
        if data is not None:
            return samples_from_folder(data, classes)[0]
        assert manifest is not None
        return read_manifest(manifest, split, classes)[0]

    description = str(data) if data is not None else f"{manifest} ({split} split)"
    options = EvaluateOptions(
        batch_size=batch_size,
        resamples=bootstrap,
        seed=seed,
        latency_runs=timing_runs,
        throughput_runs=3 if timing_runs else 0,
        mistakes=mistakes,
        heatmaps=heatmaps,
        backend=backend,
        renormalise=renormalise,
    )
    with progress_bar("Predicting") as tracker:
        metrics = evaluate_model(
            model, samples_for, description, out, options=options, advance=tracker.advance
        )
    console.print(classification_table(metrics))
    ci = metrics["bootstrap_95ci"]
    console.print(
        f"accuracy {metrics['accuracy']:.4f} (95% CI {ci['accuracy'][0]:.4f}-"
        f"{ci['accuracy'][1]:.4f}), macro-F1 {metrics['macro_f1']:.4f} "
        f"(95% CI {ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f}) on {metrics['n_images']} "
        f"images; {len(metrics['skipped'])} skipped"
    )
    for title, text in sample_notes(metrics):
        console.print(f"[bold]{title}:[/] {text}", highlight=False)
    console.print(f"Reports: {out}")
