"""Release: turn a finished training run into a model folder that others can use.

A released model is what the README's main job, ``predict`` and ``serve`` use. It must say
what it was trained on and how well it does on held-out images, so a release calibrates it on
the validation split, evaluates it on the test split, and records both in the model card.
The folder is assembled in a hidden staging folder beside its destination and renamed into
place only when complete, so an interrupted release never leaves a half-written model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leukoscope.data.datasets import read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.calibrate import calibrate
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.fileio import sha256_file
from leukoscope.machine import describe_machine
from leukoscope.models import card, update_card
from leukoscope.progress import TrackerFactory, no_tracker

MAX_RELEASE_BYTES = 20 * 1024 * 1024
"""Released weights are committed to the repository; larger ones are refused."""
RELEASED_FILES = ("model.safetensors", "model_card.json")


@dataclass(frozen=True)
class Release:
    """A published model: its folder and the test-split metrics of ``evaluate_model``."""

    path: Path
    metrics: dict[str, Any]


def check_run(run: Path) -> None:
    """Refuse a run that is not finished, or whose weights are too large to release.

    Raises
    ------
    LeukoscopeError
        A released file is missing, or the weights exceed :data:`MAX_RELEASE_BYTES`.
    """
    for file in RELEASED_FILES:
        if not (run / file).is_file():
            raise LeukoscopeError(f"{run / file}: missing; is {run} a finished training run?")
    if (run / "model.safetensors").stat().st_size > MAX_RELEASE_BYTES:
        raise LeukoscopeError(f"{run / 'model.safetensors'}: larger than 20 MB, not released")


def release_model(
    run: Path,
    manifest: Path,
    name: str,
    *,
    models_dir: Path = Path("models"),
    target_coverage: float = 0.95,
    views: int = 1,
    progress: TrackerFactory = no_tracker,
) -> Release:
    """Calibrate on validation, evaluate on test, and publish to ``models_dir/name``.

    Parameters
    ----------
    run
        Training run directory (holds ``model.safetensors`` and ``model_card.json``).
    manifest
        The run's split manifest: its ``val`` split calibrates, its ``test`` split scores.
    name
        Folder name of the release under ``models_dir``; an existing one is replaced.
    target_coverage
        Fraction of validation cells left unflagged by the abstention threshold.
    views
        Test-time views stored in the card (the calibration is fitted with them).
    progress
        Opens one tracker for the calibration and one for the evaluation.

    Returns
    -------
    Release
        The released folder and its test-split metrics.
    """
    check_run(run)
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".{name}-*"):  # staging of a release that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}-") as tmp:
        staging = Path(tmp) / name
        staging.mkdir()
        for file in RELEASED_FILES:
            shutil.copy2(run / file, staging / file)
        with progress("Calibrating on validation", None) as tracker:
            calibrate(
                staging,
                manifest,
                target_coverage=target_coverage,
                views=views,
                on_total=tracker.set_total,
                on_progress=tracker.advance,
            )
        with progress("Evaluating on test", None) as tracker:
            metrics = evaluate_model(
                staging,
                lambda classes: read_manifest(manifest, "test", classes)[0],
                f"{manifest.name} (test split)",
                staging / "evaluation",
                # Heatmaps would put images derived from the dataset into the repository;
                # the test metrics describe the model as released, never a renormalised one.
                options=EvaluateOptions(heatmaps=False, renormalise=False),
                advance=tracker.advance,
                model_name=str(models_dir / name),
            )
        update_card(
            staging,
            test_metrics=card.TestMetrics.from_evaluation(metrics),
            release=card.Release(
                name=name,
                date=datetime.now(UTC).isoformat(timespec="seconds"),
                run=str(run),
                manifest=manifest.name,
                manifest_sha256=sha256_file(manifest),
                machine=describe_machine(),
                command=f"leukoscope release {run} --manifest {manifest} --name {name}"
                + (f" --views {views}" if views > 1 else ""),
            ),
        )
        target = models_dir / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return Release(target, metrics)
