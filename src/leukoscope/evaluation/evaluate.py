"""``leukoscope evaluate``: score a saved model on labelled images and write the reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leukoscope.data.datasets import Sample
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.metrics import BOOTSTRAP_RESAMPLES, classification_metrics
from leukoscope.evaluation.predict import predict_samples
from leukoscope.evaluation.report import write_report
from leukoscope.evaluation.timing import measure_inference
from leukoscope.models import load_model


@dataclass(frozen=True)
class EvaluateOptions:
    batch_size: int = 64
    workers: int = 2
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    latency_runs: int = 30
    throughput_runs: int = 3
    """0 skips the timing measurement."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_model(
    model_path: str | Path,
    samples_for: Callable[[Sequence[str]], list[Sample]],
    data_description: str,
    out_dir: str | Path,
    *,
    options: EvaluateOptions = EvaluateOptions(),
    device: torch.device | None = None,
    advance: Callable[[int], None] = lambda n: None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Load the model, predict ``samples_for(model classes)``, write ``metrics.json``,
    ``report.md`` and ``confusion_matrix.png`` to ``out_dir``; return the metrics."""
    device = device or default_device()
    model, card = load_model(model_path)
    classes = card["classes"]
    samples = samples_for(classes)
    predictions = predict_samples(
        model,
        card,
        samples,
        device=device,
        batch_size=options.batch_size,
        workers=options.workers,
        advance=advance,
    )
    if not len(predictions.y_true):
        raise LeukoscopeError(f"{data_description}: none of the {len(samples)} images is readable")
    metrics = classification_metrics(
        predictions.y_true,
        predictions.y_pred,
        classes,
        resamples=options.resamples,
        seed=options.seed,
    )
    metrics.update(model=model_name or str(model_path), arch=card["arch"], data=data_description)
    metrics["skipped"] = predictions.skipped
    if options.throughput_runs:
        metrics["timing"] = measure_inference(
            model,
            card["input_size"],
            device,
            latency_runs=options.latency_runs,
            throughput_runs=options.throughput_runs,
        )
    write_report(out_dir, metrics)
    return metrics
