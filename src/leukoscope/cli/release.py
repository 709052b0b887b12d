"""``leukoscope release``: turn a finished training run into a released model folder.

A released model is what the README's main job, ``predict`` and ``serve`` use. It must say what
it was trained on and how well it does on held-out images, so release calibrates it on the
validation split, evaluates it on the test split, and records both in the model card.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import typer

from leukoscope.cli.app import app, console, progress_bar
from leukoscope.cli.calibrate import VIEWS_HELP
from leukoscope.data.datasets import read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.evaluation.report import classification_table
from leukoscope.inference.calibration import calibrate, update_card
from leukoscope.machine import describe_machine
from leukoscope.models.weights import sha256_file

MAX_RELEASE_BYTES = 20 * 1024 * 1024
RELEASED_FILES = ("model.safetensors", "model_card.json")


@app.command("release")
def release_command(
    run: Path = typer.Argument(..., help="Training run directory (holds model.safetensors)."),
    manifest: Path = typer.Option(..., "--manifest", help="The run's split manifest."),
    name: str = typer.Option(..., "--name", help="Folder name under --models-dir."),
    models_dir: Path = typer.Option(Path("models"), "--models-dir"),
    target_coverage: float = typer.Option(0.95, "--target-coverage", min=0.5, max=1.0),
    views: int = typer.Option(1, "--views", help=VIEWS_HELP),
) -> None:
    """Calibrate on validation, evaluate on test, and publish to models/<name>/."""
    for file in RELEASED_FILES:
        if not (run / file).is_file():
            raise LeukoscopeError(f"{run / file}: missing; is {run} a finished training run?")
    if (run / "model.safetensors").stat().st_size > MAX_RELEASE_BYTES:
        raise LeukoscopeError(f"{run / 'model.safetensors'}: larger than 20 MB, not released")
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".{name}-*"):  # staging of a release that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}-") as tmp:
        staging = Path(tmp) / name
        staging.mkdir()
        for file in RELEASED_FILES:
            shutil.copy2(run / file, staging / file)
        with progress_bar("Calibrating on validation") as (progress, task):
            calibrate(
                staging,
                manifest,
                target_coverage=target_coverage,
                views=views,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )
        with progress_bar("Evaluating on test") as (progress, task):
            metrics = evaluate_model(
                staging,
                lambda classes: read_manifest(manifest, "test", classes)[0],
                f"{manifest.name} (test split)",
                staging / "evaluation",
                # Heatmaps would put images derived from the dataset into the repository.
                options=EvaluateOptions(heatmaps=False),
                advance=lambda n: progress.advance(task, n),
                model_name=str(models_dir / name),
            )
        update_card(
            staging,
            test_metrics={
                key: metrics[key]
                for key in ("accuracy", "macro_f1", "balanced_accuracy", "n_images")
            }
            | {"bootstrap_95ci": metrics["bootstrap_95ci"], "per_class": metrics["per_class"]},
            release={
                "name": name,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "run": str(run),
                "manifest": manifest.name,
                "manifest_sha256": sha256_file(manifest),
                "machine": describe_machine(),
                "command": f"leukoscope release {run} --manifest {manifest} --name {name}"
                + (f" --views {views}" if views > 1 else ""),
            },
        )
        target = models_dir / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    console.print(classification_table(metrics))
    console.print(
        f"Released {target}: test accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f} on {metrics['n_images']} images"
    )
