"""Calibrating a saved model, and the calibration part of its reports.

:func:`calibrate` is the workflow behind ``leukoscope calibrate`` and ``release``: it fits the
temperature (:mod:`leukoscope.inference.calibration`) and the abstention rule
(:mod:`leukoscope.inference.abstention`) on a manifest's images, stores them in the model card
and writes ``calibration.md``. :func:`calibration_section` is the Markdown, plots and numbers
that both calibration and evaluation reports show. The runtime (``inference``) only applies
what is fitted here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.datasets import evenly_spaced, read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.inference.abstention import (
    DEFAULT_CONFIDENCE,
    RENORMALISED_STATS_NAME,
    Abstainer,
)
from leukoscope.inference.calibration import (
    ECE_BINS,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.softmax import softmax
from leukoscope.models import load_model, update_card
from leukoscope.models.card import Calibration
from leukoscope.reports.figures import save_figure


def accuracy_coverage(scores: np.ndarray, correct: np.ndarray, points: int = 100) -> dict[str, Any]:
    """Accuracy of the predictions kept when only the top-scored fraction is kept.

    Returns the curve at ``points`` evenly spaced coverages (with the score threshold giving
    each) and the area under the risk-coverage curve (AURC; lower is better).
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    hits = np.asarray(correct, dtype=np.float64)[order]
    n = hits.size
    if n == 0:
        return {"coverage": [], "accuracy": [], "threshold": [], "aurc": None}
    cumulative = np.cumsum(hits) / np.arange(1, n + 1)
    kept = np.unique(np.clip(np.round(np.linspace(1 / points, 1.0, points) * n), 1, n)).astype(int)
    return {
        "coverage": (kept / n).round(4).tolist(),
        "accuracy": cumulative[kept - 1].round(4).tolist(),
        "threshold": scores[order][kept - 1].round(6).tolist(),
        "aurc": round(float(np.mean(1.0 - cumulative)), 5),
    }


def plot_accuracy_coverage(
    curve: Mapping[str, Any], path: str | Path, marker: tuple[float, float] | None = None
) -> Path:
    """Save the accuracy-coverage curve as a PNG; ``marker`` = the (coverage, accuracy) chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(curve["coverage"], curve["accuracy"], color="tab:blue")
    if marker is not None:
        ax.plot(*marker, "o", color="tab:red", label=f"threshold: coverage {marker[0]:.1%}")
        ax.legend(loc="lower left")
    ax.set(xlabel="coverage (fraction not flagged)", ylabel="accuracy of kept predictions")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy-coverage")
    return save_figure(fig, path)


def plot_reliability(
    curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, n_bins: int = ECE_BINS
) -> Path:
    """Save a reliability diagram (accuracy per confidence bin) of one or more bin sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    width = 1.0 / n_bins
    for offset, (name, bins) in enumerate(curves.items()):
        shift = (offset - (len(curves) - 1) / 2) * width / len(curves)
        ax.bar(
            [b["lower"] + width / 2 + shift for b in bins],
            [b["accuracy"] for b in bins],
            width=width / len(curves),
            alpha=0.7,
            label=name,
        )
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def calibration_section(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    temperature: float,
    out_dir: str | Path,
    *,
    scores: np.ndarray | None = None,
    threshold: float | None = None,
    calibrated: bool = True,
) -> tuple[str, dict[str, Any]]:
    """The calibration part of a report: ECE before and after temperature scaling, a
    reliability diagram and the accuracy-coverage curve (PNGs and JSON written to ``out_dir``).

    ``scores`` are the abstention scores of the images (``Predictor.abstainer.scores(logits,
    features)``; default: the calibrated maximum softmax probability); ``threshold`` (the model
    card's) is marked on the curve with the coverage and accuracy it gives on these data.
    ``calibrated=False`` says in the text that the temperature was never fitted (T = 1).
    Returns Markdown (linking the PNGs by file name) and the metrics.
    """
    out = Path(out_dir)
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    before, after = softmax(logits, axis=1), softmax(logits / temperature, axis=1)
    correct = after.argmax(axis=1) == labels
    metrics: dict[str, Any] = {
        "n": len(labels),
        "classes": list(classes),
        "accuracy": round(float(correct.mean()), 4),
        "temperature": round(temperature, 4),
        "ece_before": round(expected_calibration_error(before, labels), 4),
        "ece_after": round(expected_calibration_error(after, labels), 4),
        "nll_before": round(negative_log_likelihood(before, labels), 4),
        "nll_after": round(negative_log_likelihood(after, labels), 4),
    }
    plot_reliability(
        {
            "uncalibrated": reliability_bins(before, labels),
            f"T = {temperature:.2f}": reliability_bins(after, labels),
        },
        out / "reliability.png",
    )
    scores = after.max(axis=1) if scores is None else np.asarray(scores)
    curve = accuracy_coverage(scores, correct)
    metrics["aurc"] = curve["aurc"]
    atomic_write_json(out / "accuracy_coverage.json", curve)
    marker = None
    if threshold is not None:
        kept = scores >= threshold
        coverage = float(kept.mean())
        # When every image is flagged, the accuracy of the kept ones is undefined, not 0.
        accuracy_kept = float(correct[kept].mean()) if kept.any() else None
        metrics["abstention"] = {
            "threshold": threshold,
            "coverage": round(coverage, 4),
            "accuracy_kept": None if accuracy_kept is None else round(accuracy_kept, 4),
        }
        if accuracy_kept is not None:
            marker = (coverage, accuracy_kept)
    plot_accuracy_coverage(curve, out / "accuracy_coverage.png", marker)
    lines = [
        "## Calibration",
        "",
        f"Temperature scaling with T = {temperature:.3f} on {len(labels)} images."
        if calibrated
        else "The model is not calibrated (run `leukoscope calibrate`): T = 1 below.",
        "",
        "| | uncalibrated | calibrated |",
        "| --- | ---: | ---: |",
        f"| expected calibration error ({ECE_BINS} bins) | {metrics['ece_before']:.4f} | "
        f"{metrics['ece_after']:.4f} |",
        f"| negative log-likelihood | {metrics['nll_before']:.4f} | {metrics['nll_after']:.4f} |",
        "",
        "![Reliability diagram](reliability.png)",
        "",
        "## Abstention",
        "",
        f"Area under the risk-coverage curve: {curve['aurc']} (lower is better).",
    ]
    if marker is not None:
        lines.append(
            f"At the abstention threshold {threshold:.4f}, {marker[0]:.1%} of these images keep "
            f"their prediction, with accuracy {marker[1]:.2%} (all images: "
            f"{metrics['accuracy']:.2%})."
        )
    elif threshold is not None:
        lines.append(
            f"At the abstention threshold {threshold:.4f} every one of these images is flagged "
            "uncertain."
        )
    lines += ["", "![Accuracy-coverage curve](accuracy_coverage.png)", ""]
    return "\n".join(lines), metrics


RENORMALISED_FIT_CELLS = 400
"""Training cells the model is renormalised on, and validation cells, to fit the abstention
rule of renormalised models (evenly spread over the classes): with the EfficientNet's four
views that is about 3 minutes on two CPU cores."""


def calibrate_renormalised(
    model_path: str | Path,
    manifest: str | Path,
    *,
    split: str = "val",
    cells: int = RENORMALISED_FIT_CELLS,
) -> dict[str, Any]:
    """Fit the abstention rule of the calibrated model at ``model_path`` renormalised on its
    own training cells, and store it with the model (``renormalised_abstention``).

    :func:`~leukoscope.training.adapt.fit_renormalised_reference` does the fitting, on up to
    ``cells`` training and ``cells`` ``split`` cells of ``manifest``. :func:`calibrate` calls
    this for every model with BatchNorm layers.

    Returns
    -------
    dict
        The card section, the numbers of cells it was fitted on and the unreadable files.

    Raises
    ------
    LeukoscopeError
        The model is not calibrated or has no BatchNorm layers, or too few cells are readable.
    """
    from leukoscope.training.adapt import cells_from_samples, fit_renormalised_reference

    model, card = load_model(model_path)
    if card.abstention is None:
        raise LeukoscopeError(f"{model_path}: not calibrated; run leukoscope calibrate first")
    model_dir = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    per_class = -(-cells // len(card.classes))
    train, val = (
        cells_from_samples(
            evenly_spaced(read_manifest(manifest, name, classes=card.classes)[0], per_class), card
        )
        for name in ("train", split)
    )
    if not len(val.pixels):
        raise LeukoscopeError(f"{manifest}: no readable {split} images to fit on")
    abstainer = fit_renormalised_reference(model, card, train, val)
    section = abstainer.save(model_dir, card.abstention.target_coverage, RENORMALISED_STATS_NAME)
    update_card(model_dir, renormalised_abstention=section)
    return dataclasses.asdict(section) | {
        "cells": {"train": len(train.labels), split: len(val.labels)},
        "unreadable": train.skipped + val.skipped,
    }


def calibrate(
    model_path: str | Path,
    manifest: str | Path,
    *,
    split: str = "val",
    target_coverage: float = 0.95,
    confidence: str = DEFAULT_CONFIDENCE,
    fit_per_class: int = 300,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 2,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    views: int | None = None,
    extra_views_below: float | None = None,
) -> dict[str, Any]:
    """Fit the temperature and the abstention rule, and store them with the model.

    ``views`` sets the card's test-time views first (they change the logits, so the
    calibration is fitted with them); None keeps the card's. ``extra_views_below`` sets the
    card's :attr:`~leukoscope.models.card.ModelCard.extra_views_below` (None keeps the card's,
    and one view has none). With it, the temperature is fitted on every view of every image
    (the confidence that decides which images get the other views is the calibrated one), and
    the abstention rule on the first view's features, the features that prediction then
    gives it (:func:`~leukoscope.inference.runtime.with_extra_views`).

    The temperature, the validation percentiles and the threshold come from ``split``; the
    class-conditional feature Gaussians from up to ``fit_per_class`` training images per class.
    The card's ``calibration`` and ``abstention`` sections and ``abstention.safetensors`` are
    rewritten atomically; ``calibration.md``/``.json`` with the reliability diagram and the
    accuracy-coverage curve go to ``out_dir`` (default: the model's directory). Logits come from
    PyTorch, the reference the ONNX exports are checked against.

    A model with BatchNorm layers also gets the abstention rule of its renormalised self
    (:func:`calibrate_renormalised`): the old one would not fit the new temperature or views.
    When that cannot be fitted (too few training cells), the model is left without one and the
    reason is in the returned metrics.
    """
    from leukoscope.training.adapt import has_batchnorm

    model, card = load_model(model_path)
    # The old calibration and abstention are refitted here, so not applied while fitting.
    views = views or card.test_time_views
    below = extra_views_below if extra_views_below is not None else card.extra_views_below
    card = card.replace(
        test_time_views=views,
        extra_views_below=below if views > 1 else None,
        calibration=None,
        abstention=None,
    )
    predictor = Predictor.from_model(model, card)
    val, classes = read_manifest(manifest, split, classes=predictor.classes)
    train = evenly_spaced(
        read_manifest(manifest, "train", classes=predictor.classes)[0], fit_per_class
    )
    if on_total is not None:
        on_total(len(val) + len(train))
    val_out, train_out = (
        predictor.outputs_for_paths(
            [s.path for s in samples],
            batch_size=batch_size,
            workers=workers,
            on_progress=on_progress,
        )
        for samples in (val, train)
    )
    if len(val_out.indices) < 2 or not train_out.indices:
        raise LeukoscopeError(f"{manifest}: too few readable {split} or train images to fit on")
    val_labels = np.array([val[i].label for i in val_out.indices])
    temperature = fit_temperature(val_out.logits, val_labels)
    abstainer = Abstainer.fit(
        train_out.features,
        np.array([train[i].label for i in train_out.indices]),
        val_out.logits,
        val_out.features,
        temperature=temperature,
        confidence=confidence,
        target_coverage=target_coverage,
    )
    val_scores = abstainer.scores(val_out.logits, val_out.features)  # for the report
    model_dir = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    out = Path(out_dir) if out_dir is not None else model_dir
    markdown, metrics = calibration_section(
        val_out.logits,
        val_labels,
        classes,
        temperature,
        out,
        scores=val_scores,
        threshold=abstainer.threshold,
    )
    abstention = abstainer.save(model_dir, target_coverage)
    calibration = Calibration(
        temperature=temperature,
        ece_before=metrics["ece_before"],
        ece_after=metrics["ece_after"],
        n=len(val_labels),
        split=split,
    )
    update_card(
        model_dir,
        calibration=calibration,
        abstention=abstention,
        renormalised_abstention=None,  # refitted below: it depends on the temperature and views
        test_time_views=card.test_time_views,
        extra_views_below=card.extra_views_below,
    )
    metrics["abstention"] |= dataclasses.asdict(abstention)
    if has_batchnorm(model):
        try:
            renormalised = calibrate_renormalised(model_dir, manifest, split=split)
        except LeukoscopeError as exc:  # e.g. too few training cells: the rest stands
            renormalised = {"error": str(exc)}
        metrics["renormalised_abstention"] = renormalised
    metrics["unreadable"] = [
        {"path": str(samples[i].path), "error": message}
        for samples, result in ((val, val_out), (train, train_out))
        for i, message in result.errors
    ]
    atomic_write_json(out / "calibration.json", metrics)
    atomic_write_text(
        out / "calibration.md",
        f"# Calibration of {model_dir.name} on {Path(manifest).name} ({split} split)\n\n{markdown}",
    )
    return metrics
