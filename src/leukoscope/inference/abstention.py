"""Abstention: flag predictions to leave for a person, because the cell is ambiguous or because
the input is unlike anything the model was trained on.

Logit-based scores alone do not catch unfamiliar inputs. On a SqueezeNet fine-tuned on PBC
(wbc5, validation accuracy 96.5%), with the threshold set for 95% validation coverage, the
maximum softmax probability (MSP) flagged 6% of Gaussian noise, 42% of blank fields and 28% of
photos, and the energy score (Liu et al., NeurIPS 2020) at most 2%: such inputs can give large,
confident logits. Distances in the backbone's feature space catch them. So two criteria are
combined:

confidence
    the maximum *calibrated* softmax probability (Hendrycks & Gimpel, ICLR 2017), the default:
    the best-established ranking of in-distribution mistakes, and interpretable once temperature
    scaled. ``energy`` (``T * logsumexp(logits / T)``) can be chosen instead.
familiarity
    minus the Mahalanobis distance of the pooled backbone features to the nearest class mean,
    with one shared covariance shrunk by Ledoit-Wolf (Lee et al., "A Simple Unified Framework for
    Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), fitted on
    training images.

Each is turned into its percentile among validation cells, and the abstention score is the
lower of the two: a score of 0.03 means "as unusual as the most unusual 3% of validation cells
on at least one criterion". One threshold on it, chosen on validation for a target coverage,
gives both criteria the same share of the abstention budget. On that model the combination
flagged every noise, blank and photo input; the price is that each criterion gets half the
budget, so cell types the model has no class for were caught a little less often than by MSP
alone (erythroblasts, immature granulocytes, platelets: 22/34/44% against 28/42/54%).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import safetensors.numpy

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes
from leukoscope.inference.softmax import logsumexp, softmax
from leukoscope.models.card import Abstention, ModelCard

CONFIDENCE_SCORES = ("msp", "energy")
DEFAULT_CONFIDENCE = "msp"
STATS_NAME = "abstention.safetensors"
"""Class means, whitening matrix and validation score distributions, beside the weights."""
RENORMALISED_STATS_NAME = "abstention-renormalised.safetensors"
"""The same statistics of the model renormalised on its own training cells, for the models
``adapt --unlabelled`` makes from it (the card's ``renormalised_abstention``; see
:func:`leukoscope.training.adapt.fit_renormalised_reference`)."""


def confidence_scores(logits: np.ndarray, temperature: float, score: str) -> np.ndarray:
    """Per-row confidence of raw logits (N, C) under ``temperature``; higher = more confident."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if score == "energy":
        return temperature * logsumexp(scaled, axis=1)
    if score == "msp":
        return softmax(scaled, axis=1).max(axis=1)
    raise LeukoscopeError(
        f"unknown confidence score {score!r}: use {' or '.join(CONFIDENCE_SCORES)}"
    )


def fit_threshold(scores: np.ndarray, target_coverage: float) -> float:
    """The largest threshold keeping at least ``target_coverage`` of ``scores`` (``>=`` it)."""
    if not 0.0 < target_coverage <= 1.0:
        raise LeukoscopeError(f"target coverage must be in (0, 1], got {target_coverage}")
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    if ranked.size == 0:
        raise LeukoscopeError("cannot fit an abstention threshold on no scores")
    return float(ranked[int(np.floor((1.0 - target_coverage) * ranked.size))])


def _percentile(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fraction of the sorted ``reference`` at or below each value (the empirical CDF)."""
    return np.searchsorted(reference, values, side="right") / len(reference)


def _familiarity(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Minus the squared Mahalanobis distance of each feature row to the nearest class mean."""
    return _whitened_familiarity(features, whitening, means @ whitening)


def _whitened_familiarity(
    features: np.ndarray, whitening: np.ndarray, whitened_means: np.ndarray
) -> np.ndarray:
    """:func:`_familiarity` with the class means already whitened (``means @ whitening``)."""
    f = np.asarray(features, dtype=np.float32) @ whitening
    m = whitened_means
    squared = (f * f).sum(1)[:, None] - 2.0 * f @ m.T + (m * m).sum(1)[None, :]
    return -np.maximum(squared, 0.0).min(axis=1).astype(np.float64)


@dataclass
class Abstainer:
    """The fitted abstention rule of one model (see the module docstring)."""

    temperature: float
    confidence: str
    means: np.ndarray
    """Class means of the pooled features (C, D)."""
    whitening: np.ndarray
    """Cholesky factor W of the shared precision: squared Mahalanobis = |(f - mu) W|^2."""
    val_confidence: np.ndarray
    """Sorted confidence scores of the validation cells."""
    val_familiarity: np.ndarray
    """Sorted familiarity scores of the validation cells."""
    threshold: float = 0.0

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        train_labels: np.ndarray,
        val_logits: np.ndarray,
        val_features: np.ndarray,
        *,
        temperature: float,
        confidence: str = DEFAULT_CONFIDENCE,
        target_coverage: float | None = None,
    ) -> Abstainer:
        """Fit the class Gaussians on training features and the percentiles on validation;
        with ``target_coverage``, also the threshold that keeps that share of the validation
        cells (:func:`fit_threshold`)."""
        from sklearn.covariance import LedoitWolf  # a second to import: fitting only

        x = np.asarray(train_features, dtype=np.float64)
        labels = np.asarray(train_labels)
        present = np.unique(labels)
        means = np.stack([x[labels == c].mean(axis=0) for c in present])
        centred = x - means[np.searchsorted(present, labels)]
        precision = LedoitWolf().fit(centred).precision_
        whitening = np.linalg.cholesky((precision + precision.T) / 2).astype(np.float32)
        means = means.astype(np.float32)
        abstainer = cls(
            temperature=temperature,
            confidence=confidence,
            means=means,
            whitening=whitening,
            val_confidence=np.sort(confidence_scores(val_logits, temperature, confidence)),
            val_familiarity=np.sort(_familiarity(val_features, means, whitening)),
        )
        if target_coverage is not None:
            scores = abstainer.scores(val_logits, val_features)
            abstainer.threshold = fit_threshold(scores, target_coverage)
        return abstainer

    def scores(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The abstention score in [0, 1]: the lower validation percentile of the two criteria."""
        confidence = confidence_scores(logits, self.temperature, self.confidence)
        familiarity = _whitened_familiarity(features, self.whitening, self._whitened_means)
        return np.minimum(
            _percentile(self.val_confidence, confidence),
            _percentile(self.val_familiarity, familiarity),
        )

    @cached_property
    def _whitened_means(self) -> np.ndarray:
        """The class means whitened once, not at every call: the product of the means and the
        whitening matrix took 16 ms of a 24 ms one-image prediction on two shared cores."""
        return self.means @ self.whitening

    def save(
        self, model_dir: str | Path, target_coverage: float, name: str = STATS_NAME
    ) -> Abstention:
        """Write the statistics beside the weights as ``name``; return the card section that
        describes them (``abstention``, or ``renormalised_abstention``)."""
        data = safetensors.numpy.save(
            {
                "means": self.means,
                "whitening": self.whitening,
                "val_confidence": self.val_confidence.astype(np.float64),
                "val_familiarity": self.val_familiarity.astype(np.float64),
            }
        )
        atomic_write_bytes(Path(model_dir) / name, data)
        return Abstention(
            confidence=self.confidence,
            threshold=self.threshold,
            target_coverage=target_coverage,
            stats_sha256=hashlib.sha256(data).hexdigest(),
        )

    @classmethod
    def load(
        cls, model_dir: str | Path, card: ModelCard, *, renormalised: bool = False
    ) -> Abstainer:
        """The abstainer described by a model card and its statistics file; ``renormalised``:
        the one for the model renormalised on its own cells (``renormalised_abstention``)."""
        path = Path(model_dir) / (RENORMALISED_STATS_NAME if renormalised else STATS_NAME)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LeukoscopeError(f"{path}: cannot read the abstention statistics ({exc})") from exc
        section = card.renormalised_abstention if renormalised else card.abstention
        return cls.from_bytes(data, card, str(path), section)

    @classmethod
    def from_bytes(
        cls, data: bytes, card: ModelCard, source: str, section: Abstention | None = None
    ) -> Abstainer:
        """The abstainer of a model card from its statistics file's bytes (``source`` names
        where they came from in errors); ``section`` describes them (default: the card's
        ``abstention``)."""
        section, calibration = section or card.abstention, card.calibration
        if section is None or calibration is None:
            raise LeukoscopeError(f"{source}: the model is not calibrated")
        if hashlib.sha256(data).hexdigest() != section.stats_sha256:
            raise LeukoscopeError(f"{source}: sha256 does not match the model card; recalibrate")
        arrays = safetensors.numpy.load(data)
        return cls(
            temperature=calibration.temperature,
            confidence=section.confidence,
            means=arrays["means"],
            whitening=arrays["whitening"],
            val_confidence=arrays["val_confidence"],
            val_familiarity=arrays["val_familiarity"],
            threshold=section.threshold,
        )


PACKED_WHITENING = "whitening_lower_triangle"


def pack_stats(data: bytes) -> bytes:
    """An abstention statistics file made smaller for embedding in an export, losslessly.

    The whitening matrix is a Cholesky factor, lower-triangular: its lower triangle alone
    (``n (n + 1) / 2`` values) holds it. For EfficientNet's 1,280 features that halves the
    6.6 MB file, which is what keeps a standalone export under 20 MB.
    :func:`unpack_stats` restores the very bytes (the card's sha256 checks them).
    """
    arrays = safetensors.numpy.load(data)
    whitening = arrays["whitening"]
    if np.triu(whitening, 1).any():
        return data
    del arrays["whitening"]
    arrays[PACKED_WHITENING] = whitening[np.tril_indices(len(whitening))]
    return safetensors.numpy.save(arrays)


def unpack_stats(packed: bytes) -> bytes:
    """The statistics file :func:`pack_stats` packed."""
    arrays = safetensors.numpy.load(packed)
    if PACKED_WHITENING not in arrays:
        return packed
    lower = arrays.pop(PACKED_WHITENING)
    size = int((np.sqrt(8 * len(lower) + 1) - 1) / 2)
    whitening = np.zeros((size, size), dtype=lower.dtype)
    whitening[np.tril_indices(size)] = lower
    arrays["whitening"] = whitening
    return safetensors.numpy.save(arrays)
