"""``leukoscope evaluate``: score a saved model on labelled images and write the reports.

Predictions come from the same :class:`~leukoscope.inference.predictor.Predictor` that
``predict`` and the web app use (by default its PyTorch backend, the reference ONNX exports are
checked against; an ONNX export, int8 included, can be scored too), so the report describes
exactly what users get. Besides the classification metrics the report shows calibration on
these images (ECE before and after temperature scaling, a reliability diagram, the
accuracy-coverage curve at the card's abstention threshold) and the most confident mistakes,
with Grad-CAM heatmaps when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoscope.data.datasets import Sample
from leukoscope.data.preprocess import UNSCALED, ScaleEstimate
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.calibrate import calibration_section
from leukoscope.evaluation.metrics import BOOTSTRAP_RESAMPLES, classification_metrics
from leukoscope.evaluation.mistakes import confident_mistakes, mistake_heatmaps
from leukoscope.evaluation.report import mistakes_section, write_report
from leukoscope.evaluation.timing import measure_inference
from leukoscope.inference.predictor import Outputs, Prediction, Predictor
from leukoscope.inference.shift import renormalised_or_why


@dataclass(frozen=True)
class EvaluateOptions:
    batch_size: int = 64
    workers: int = 2
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    latency_runs: int = 30
    throughput_runs: int = 3
    """0 skips the timing measurement."""
    mistakes: int = 12
    """How many of the most confident mistakes to list (0: none)."""
    heatmaps: bool = True
    """Draw Grad-CAM heatmaps of the listed mistakes (images derived from the data)."""
    backend: str = "torch"
    """Predictor backend; ``onnx`` (or an ``.onnx`` model path) scores an export, e.g. int8."""
    rescale: bool = True
    """Rescale the evaluated images, as one sample, to the training images' magnification
    (:class:`~leukoscope.data.preprocess.SampleScale`, when the card has one), as ``predict``
    does; False scores them as they are."""
    renormalise: bool = True
    """When the images, as one sample, look unlike the training data (the shift check), score
    the model renormalised on them instead, as ``predict`` does
    (:func:`~leukoscope.training.adapt.renormalised_for_sample`); False scores the model as it
    is."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _classified(
    predictor: Predictor,
    paths: Sequence[Path],
    options: EvaluateOptions,
    advance: Callable[[int], None],
) -> tuple[ScaleEstimate, Outputs, list[Prediction]]:
    """The files rescaled as one sample (with ``options.rescale``), their raw outputs and the
    predictions of the readable ones (for those the model flags uncertain, its fallback's
    calls, if it has one: :meth:`~leukoscope.inference.predictor.Predictor.refer_paths`)."""
    scale = predictor.estimate_scale(paths) if options.rescale else UNSCALED
    outputs = predictor.outputs_for_paths(
        paths,
        batch_size=options.batch_size,
        workers=options.workers,
        on_progress=advance,
        scale=scale,
    )
    predictions = predictor.predictions_from_outputs(
        outputs.logits,
        outputs.features,
        [str(paths[i]) for i in outputs.indices],
        outputs.notes_in_order(),
    )
    predictions = predictor.refer_paths(
        predictions,
        [paths[i] for i in outputs.indices],
        scale,
        batch_size=options.batch_size,
        workers=options.workers,
    )
    return scale, outputs, predictions


def _scored_logits(
    predictor: Predictor, outputs: Outputs, predictions: list[Prediction]
) -> np.ndarray:
    """The model's logits, with each row its fallback classified replaced by logits that give
    the fallback's calibrated probabilities at this model's temperature (so that accuracy and
    calibration score the calls the user gets)."""
    logits = np.array(outputs.logits, dtype=np.float64)
    for row, prediction in enumerate(predictions):
        if prediction.fallback:
            probabilities = np.array([prediction.probabilities[c] for c in predictor.classes])
            logits[row] = predictor.temperature * np.log(np.maximum(probabilities, 1e-300))
    return logits


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
    """Predict ``samples_for(model classes)``; write ``metrics.json``, ``report.md`` and its
    figures to ``out_dir``; return the metrics. ``device`` is where speed is timed."""
    predictor = Predictor.load(model_path, backend=options.backend)
    classes = predictor.classes
    samples = samples_for(classes)
    paths = [sample.path for sample in samples]
    scale, outputs, predictions = _classified(predictor, paths, options, advance)
    if not outputs.indices:
        raise LeukoscopeError(f"{data_description}: none of the {len(samples)} images is readable")
    renormalised, not_renormalised = 0, None
    shift = predictor.check_shift(predictions)
    if options.renormalise and shift is not None and shift.shifted:
        source, cells = predictor, [p.source for p in predictions]

        def make() -> Predictor:
            from leukoscope.training.adapt import renormalised_for_sample

            return renormalised_for_sample(source, cells, scale)

        result = renormalised_or_why(predictor, len(cells), make)
        if isinstance(result, str):
            not_renormalised = result
        else:
            again = _classified(result, paths, options, lambda n: None)
            if again[1].indices:
                predictor, (scale, outputs, predictions) = result, again
                adaptation = predictor.card.adaptation
                renormalised = adaptation.renormalised if adaptation else 0
            else:  # e.g. the files went away meanwhile: the first scores stand
                not_renormalised = "none of the images could be read again"
    y_true = np.array([samples[i].label for i in outputs.indices])
    logits = _scored_logits(predictor, outputs, predictions)
    metrics = classification_metrics(
        y_true, logits.argmax(1), classes, resamples=options.resamples, seed=options.seed
    )
    metrics.update(
        model=model_name or str(model_path),
        arch=predictor.card.arch,
        backend=predictor.backend,
        precision=predictor.precision,
        test_time_views=predictor.views,
        extra_views_below=predictor.card.extra_views_below,
        data=data_description,
        magnification=scale.to_dict(),
        renormalised_cells=renormalised,
        not_renormalised=not_renormalised,
        fallback=None if predictor.fallback_dir is None else str(predictor.fallback_dir),
        fallback_cells=sum(p.fallback for p in predictions),
    )
    metrics["skipped"] = [{"path": str(paths[i]), "reason": msg} for i, msg in outputs.errors]
    out = Path(out_dir)
    readable = [paths[i] for i in outputs.indices]
    markdown, metrics["calibration"] = calibration_section(
        logits,
        y_true,
        classes,
        predictor.temperature,
        out,
        scores=np.array([p.score for p in predictions]),
        threshold=predictor.abstainer.threshold if predictor.abstainer else None,
        calibrated=predictor.card.calibration is not None,
    )
    sections = [markdown]
    if options.mistakes:
        truth = [classes[label] for label in y_true]
        mistakes = confident_mistakes(predictions, truth, readable, options.mistakes)
        grid = mistake_heatmaps(predictor, mistakes, out) if options.heatmaps else None
        metrics["most_confident_mistakes"] = mistakes
        sections.append(mistakes_section(mistakes, grid.name if grid else None))
    if options.throughput_runs:
        metrics["timing"] = measure_inference(
            predictor.pixel_model,
            predictor.input_size,
            device or default_device(),
            latency_runs=options.latency_runs,
            throughput_runs=options.throughput_runs,
        )
    write_report(out, metrics, sections)
    return metrics
