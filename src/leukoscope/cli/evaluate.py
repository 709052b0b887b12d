"""``leukoscope evaluate``: metrics, report and confusion matrix of a saved model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from leukoscope.cli.app import app, console, progress_bar
from leukoscope.data.datasets import Sample, read_manifest, samples_from_folder
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.evaluation.metrics import BOOTSTRAP_RESAMPLES
from leukoscope.evaluation.report import classification_table


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Option(..., "--model", help="Model directory or its model.safetensors."),
    data: Path | None = typer.Option(
        None, "--data", help="Folder of class folders (any spelling, any subset of classes)."
    ),
    manifest: Path | None = typer.Option(None, "--manifest", help="Split manifest CSV."),
    split: str = typer.Option("test", "--split", help="Manifest split to evaluate."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, report.md, PNG."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    bootstrap: int = typer.Option(
        BOOTSTRAP_RESAMPLES, "--bootstrap", min=10, help="Bootstrap resamples for the 95% CIs."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    timing_runs: int = typer.Option(
        30, "--timing-runs", min=0, help="Batch-1 latency runs (0 skips timing)."
    ),
    mistakes: int = typer.Option(
        12, "--mistakes", min=0, help="List this many most confident mistakes (0: none)."
    ),
    heatmaps: bool = typer.Option(
        True, "--heatmaps/--no-heatmaps", help="Draw Grad-CAM heatmaps of those mistakes."
    ),
    backend: str = typer.Option(
        "torch", "--backend", help="torch, onnx or auto; --model may name an .onnx export."
    ),
) -> None:
    """Score a model on labelled images: accuracy, macro-F1, per-class table, CIs, speed,
    calibration, accuracy-coverage and the most confident mistakes with Grad-CAM heatmaps."""
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
    )
    with progress_bar("Predicting") as (progress, task):
        metrics = evaluate_model(
            model,
            samples_for,
            description,
            out,
            options=options,
            advance=lambda n: progress.advance(task, n),
        )
    console.print(classification_table(metrics))
    ci = metrics["bootstrap_95ci"]
    console.print(
        f"accuracy {metrics['accuracy']:.4f} (95% CI {ci['accuracy'][0]:.4f}-"
        f"{ci['accuracy'][1]:.4f}), macro-F1 {metrics['macro_f1']:.4f} "
        f"(95% CI {ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f}) on {metrics['n_images']} "
        f"images; {len(metrics['skipped'])} skipped"
    )
    console.print(f"Reports: {out}")
