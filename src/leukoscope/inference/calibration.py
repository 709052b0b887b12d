"""Temperature scaling and calibration error: the math the predictor's probabilities rest on.

A network's softmax is usually over-confident. Temperature scaling (Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017) divides the logits by one scalar T fitted on
held-out data: it leaves every prediction unchanged and makes "90% confident" mean right about
90% of the time. :func:`leukoscope.evaluation.calibrate.calibrate` fits T (and the abstention
threshold) on the validation split and stores both in the model card, which the
:class:`~leukoscope.inference.predictor.Predictor` applies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from leukoscope.errors import LeukoscopeError

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
