"""Temperature scaling, calibration error, and fitting a model's calibration and abstention.

A network's softmax is usually over-confident. Temperature scaling (Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017) divides the logits by one scalar T fitted on
held-out data: it leaves every prediction unchanged and makes "90% confident" mean right about
90% of the time. :func:`calibrate` fits T and the abstention threshold on the validation split
and stores both in the model card, which the :class:`~leukoscope.inference.predictor.Predictor`
applies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch.nn import functional as F

from leukoscope.data.datasets import Sample, read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.inference.abstention import (
    DEFAULT_CONFIDENCE,
    Abstainer,
    accuracy_coverage,
    fit_threshold,
    plot_accuracy_coverage,
)
from leukoscope.models import load_model
from leukoscope.models.serialization import CARD_NAME
from leukoscope.reports.figures import save_figure

ECE_BINS = 15


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of ``softmax(logits / T)``.

    Optimised over log T (so T stays positive) with L-BFGS in float64; one parameter, so this
    converges in a few iterations even on the whole validation split.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise LeukoscopeError(f"need logits (N, C) and N labels, got {tuple(z.shape)} and {len(y)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean NLL of the true classes."""
    picked = np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Equal-width confidence bins: each non-empty bin's mean confidence, accuracy and count."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            bins.append(
                {
                    "lower": b / n_bins,
                    "upper": (b + 1) / n_bins,
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return bins


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over confidence bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total)


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
        marker = (float(kept.mean()), float(correct[kept].mean()) if kept.any() else 0.0)
        metrics["abstention"] = {
            "threshold": threshold,
            "coverage": round(marker[0], 4),
            "accuracy_kept": round(marker[1], 4),
        }
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
    lines += ["", "![Accuracy-coverage curve](accuracy_coverage.png)", ""]
    return "\n".join(lines), metrics


def update_card(model_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Set top-level sections of a saved model's card, atomically; the weights (and so the
    card's sha256 of them) are untouched."""
    path = Path(model_dir) / CARD_NAME
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeukoscopeError(f"{path}: cannot read the model card ({exc})") from exc
    card.update(sections)
    atomic_write_json(path, card)
    return card


def spread(samples: Sequence[Sample], per_class: int) -> list[Sample]:
    """At most ``per_class`` samples of each label, evenly spaced through the list."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    return [
        s
        for group in by_label.values()
        for s in group[:: max(1, math.ceil(len(group) / per_class))][:per_class]
    ]


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
) -> dict[str, Any]:
    """Fit the temperature and the abstention rule, and store them with the model.

    ``views`` sets the card's test-time views first (they change the logits, so the
    calibration is fitted with them); None keeps the card's.

    The temperature, the validation percentiles and the threshold come from ``split``; the
    class-conditional feature Gaussians from up to ``fit_per_class`` training images per class.
    The card's ``calibration`` and ``abstention`` sections and ``abstention.safetensors`` are
    rewritten atomically; ``calibration.md``/``.json`` with the reliability diagram and the
    accuracy-coverage curve go to ``out_dir`` (default: the model's directory). Logits come from
    PyTorch, the reference the ONNX exports are checked against.
    """
    from leukoscope.inference.predictor import VIEWS_KEY, Predictor

    card_free = {"calibration", "abstention"}  # refitted here, so not applied while fitting
    model, card = load_model(model_path)
    card[VIEWS_KEY] = views or int(card.get(VIEWS_KEY, 1))
    predictor = Predictor.from_model(model, {k: v for k, v in card.items() if k not in card_free})
    val, classes = read_manifest(manifest, split, classes=predictor.classes)
    train = spread(read_manifest(manifest, "train", classes=predictor.classes)[0], fit_per_class)
    if on_total is not None:
        on_total(len(val) + len(train))
    options = {"batch_size": batch_size, "workers": workers, "on_progress": on_progress}
    val_out = predictor.outputs_for_paths([s.path for s in val], **options)
    train_out = predictor.outputs_for_paths([s.path for s in train], **options)
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
    )
    val_scores = abstainer.scores(val_out.logits, val_out.features)
    abstainer.threshold = fit_threshold(val_scores, target_coverage)
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
    calibration = {
        "temperature": temperature,
        "ece_before": metrics["ece_before"],
        "ece_after": metrics["ece_after"],
        "n": len(val_labels),
        "split": split,
    }
    update_card(
        model_dir, calibration=calibration, abstention=abstention, **{VIEWS_KEY: card[VIEWS_KEY]}
    )
    metrics["abstention"] |= abstention
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
