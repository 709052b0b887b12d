"""Predictions for cell images from a saved model, on PyTorch or ONNX Runtime.

Images travel as uint8 RGB pixels made by :mod:`leukoscope.data.preprocess` from the model
card's ``preprocessing`` (N, H, W, 3): a quarter of the bytes of normalised floats between
decoding workers and the model, and the same input for both backends. Normalisation happens
inside the model (:class:`PixelModel`), so an exported ONNX file is self-contained. The model
returns logits and pooled features; probabilities are temperature-scaled and the abstention
flag is set with the calibration stored in the model card (see ``leukoscope calibrate``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax
from torch import nn

from leukoscope.data.datasets import CellImageDataset, Sample, make_loader
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import (
    SCALE_CELLS,
    UNSCALED,
    ScaleEstimate,
    estimate_scale,
    pixels_dataset,
    read_rgb,
    spread,
    standardise,
    to_noted_pixels,
    to_unit,
)
from leukoscope.errors import ImageDecodeError, LeukoscopeError
from leukoscope.inference.abstention import Abstainer
from leukoscope.inference.shift import ShiftCheck, check_shift
from leukoscope.models import ModelCard, TransferModel, load_model
from leukoscope.models.serialization import WEIGHTS_NAME

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
ONNX_NAME = "model.onnx"
"""The exported file ``backend="auto"`` picks up from the model's directory."""
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "features")
WEIGHTS_SHA_KEY = "leukoscope_weights_sha256"
"""ONNX metadata key tying an export to the exact weights it came from."""
VIEWS_KEY = "test_time_views"
"""ONNX metadata key: how many symmetric views of each image the export averages."""
VIEW_COUNTS = (1, 4, 8)


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and ``label`` None) when it could not be read,
    ``note`` (with ``uncertain``) when preprocessing could not do what the model expects, e.g.
    find the cell to frame."""

    source: str
    label: str | None
    confidence: float
    probabilities: dict[str, float]
    runner_up: str | None
    runner_up_probability: float
    uncertain: bool
    score: float
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        """As JSON holds it; an unreadable file's result fields are null, not zeros."""
        if self.error is None:
            return asdict(self)
        return {
            **{f.name: None for f in fields(self)},
            "source": self.source,
            "probabilities": {},
            "error": self.error,
        }


class PixelModel(nn.Module):
    """A classifier taking uint8 RGB pixels (N, H, W, 3) at its input size, returning
    ``(logits, pooled features)``.

    It normalises with :func:`~leukoscope.data.preprocess.to_unit` and
    :func:`~leukoscope.data.preprocess.standardise`, the functions training normalises with,
    so the ONNX export and the torch backend see bit for bit the tensor training saw.

    With ``views`` 4 or 8 it averages the logits and features of the image turned by 0, 90, 180
    and 270 degrees (and, with 8, of its mirror image turned the same ways): a cell on a slide
    has no up or left, training augments with exactly these turns, and the average of the views
    errs less than any one of them. It costs ``views`` times the computation.
    """

    mean: torch.Tensor
    """Per-channel mean, shaped (1, 3, 1, 1) (a buffer, so it travels with the model)."""
    std: torch.Tensor

    def __init__(
        self, model: TransferModel, mean: Sequence[float], std: Sequence[float], views: int = 1
    ) -> None:
        super().__init__()
        if views not in VIEW_COUNTS:
            raise LeukoscopeError(f"{views} test-time views: use one of {VIEW_COUNTS}")
        self.model = model
        self.views = views
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def from_card(cls, model: TransferModel, card: ModelCard) -> PixelModel:
        """The pixel model a model card describes (normalisation and test-time views)."""
        preprocessing = card.preprocessing
        return cls(model, preprocessing.mean, preprocessing.std, card.test_time_views).eval()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """The float, normalised NCHW tensor the backbone expects."""
        return standardise(to_unit(pixels.permute(0, 3, 1, 2)), self.mean, self.std)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalise(pixels)
        if self.views > 1:
            x = torch.cat(symmetric_views(x, self.views))
        features = self.model.forward_features(x)
        logits = self.model.head.classifier(features)
        if self.views > 1:
            logits = logits.unflatten(0, (self.views, -1)).mean(0)
            features = features.unflatten(0, (self.views, -1)).mean(0)
        return logits, features


def symmetric_views(
    x: torch.Tensor, views: int, dims: tuple[int, int] = (2, 3)
) -> list[torch.Tensor]:
    """The first ``views`` of: square images turned by 0, 90, 180 and 270 degrees, then their
    mirror images turned the same (``torch.rot90`` in ops that export to ONNX). ``dims`` are
    the images' row and column axes (NCHW by default)."""
    rows, columns = dims
    turned = []
    for image in (x, x.flip(columns)) if views > 4 else (x,):
        transposed = image.transpose(rows, columns)
        turned += [image, transposed.flip(rows), image.flip(dims), transposed.flip(columns)]
    return turned[:views]


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def onnx_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation and one thread per core.

    Its threads sleep instead of spinning between operators: decoding workers and other
    processes share these cores, and with two busy cores spinning cost 8% of end-to-end
    throughput in our measurements.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cpu_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


ModelFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""uint8 pixels (N, H, W, 3) -> (raw logits (N, C), pooled features (N, D)), float32."""


def torch_runner(model: PixelModel) -> ModelFn:
    """Run the PyTorch model eagerly, without autograd."""

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features = model(torch.from_numpy(pixels))
        return logits.numpy(), features.numpy()

    return run


def onnx_runner(session: Any) -> ModelFn:
    """Run an exported model in an ONNX Runtime session."""

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return logits, features

    return run


@dataclass
class Outputs:
    """Model outputs for the readable files among some paths; ``indices`` are their positions."""

    logits: np.ndarray
    features: np.ndarray
    indices: list[int]
    errors: list[tuple[int, str]] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    """Preprocessing notes by index (see :func:`~leukoscope.data.preprocess.to_noted_pixels`)."""

    def notes_in_order(self) -> list[str | None]:
        """The note of each readable file, aligned with ``indices``."""
        return [self.notes.get(index) for index in self.indices]


@dataclass
class Predictor:
    """A loaded model ready to classify images; build it with :meth:`Predictor.load`."""

    classes: tuple[str, ...]
    card: ModelCard
    pixel_model: PixelModel
    backend: str
    run: ModelFn
    abstainer: Abstainer | None

    @classmethod
    def load(cls, model_path: str | Path, *, backend: str = "auto") -> Predictor:
        """Load a model directory, its ``model.safetensors``, or an exported ``.onnx`` in it.

        ``auto`` uses ONNX Runtime when ``model.onnx`` sits beside the weights, was exported from
        these very weights and onnxruntime imports; otherwise PyTorch. ``onnx`` requires it.
        """
        if backend not in BACKENDS:
            raise LeukoscopeError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
        path = Path(model_path)
        is_onnx = path.suffix == ".onnx"
        model_dir = path.parent if is_onnx or path.suffix == ".safetensors" else path
        model, card = load_model(model_dir / WEIGHTS_NAME if is_onnx else path)
        pixel_model = PixelModel.from_card(model, card)
        abstainer = Abstainer.load(model_dir, card) if card.abstention else None
        classes = card.classes
        if backend != "torch":
            onnx_path = path if is_onnx else model_dir / ONNX_NAME
            session = _checked_session(onnx_path, card, required=backend == "onnx" or is_onnx)
            if session is not None:
                return cls(classes, card, pixel_model, "onnx", onnx_runner(session), abstainer)
        elif is_onnx:
            raise LeukoscopeError(f"{path}: an .onnx model needs the onnx or auto backend")
        return cls.from_model(model, card, abstainer)

    @classmethod
    def from_model(
        cls, model: TransferModel, card: ModelCard, abstainer: Abstainer | None = None
    ) -> Predictor:
        """A PyTorch predictor for a model in memory (e.g. to calibrate it afresh)."""
        pixel_model = PixelModel.from_card(model, card)
        return cls(card.classes, card, pixel_model, "torch", torch_runner(pixel_model), abstainer)

    @property
    def input_size(self) -> int:
        return self.card.preprocessing.input_size

    def dataset(self, samples: Sequence[Sample], factor: float = 1.0) -> CellImageDataset:
        """``samples`` decoded as this predictor decodes files: the uint8 RGB pixels of
        :func:`~leukoscope.data.preprocess.pixels_dataset` for the card's preprocessing
        (rescaled by their sample's ``factor``)."""
        return pixels_dataset(samples, self.card.preprocessing, factor)

    def estimate_scale(self, paths: Sequence[str | Path]) -> ScaleEstimate:
        """How much the files of one sample are rescaled to the training images' magnification
        (:class:`~leukoscope.data.preprocess.SampleScale`), from at most
        :data:`~leukoscope.data.preprocess.SCALE_CELLS` of them spread evenly; unreadable
        files are left out here and reported by the prediction itself."""
        scale = self.card.preprocessing.sample_scale
        if scale is None or len(paths) < scale.min_cells:
            return UNSCALED
        draft_size = self.card.preprocessing.draft_size
        images = [read_rgb(path, draft_size) for path in spread(paths, SCALE_CELLS)]
        readable = [rgb for rgb in images if rgb is not None]
        return estimate_scale(readable, scale, self._classify_rescaled)

    def scale_of_images(self, images: Sequence[Image.Image]) -> ScaleEstimate:
        """:meth:`estimate_scale` for one sample's decoded images."""
        scale = self.card.preprocessing.sample_scale
        if scale is None or len(images) < scale.min_cells:
            return UNSCALED
        chosen = [np.asarray(image.convert("RGB")) for image in spread(images, SCALE_CELLS)]
        return estimate_scale(chosen, scale, self._classify_rescaled)

    def _classify_rescaled(self, images: Sequence[np.ndarray], factor: float) -> list[str]:
        config = self.card.preprocessing
        pixels = np.stack(
            [to_noted_pixels(Image.fromarray(rgb), config, factor)[0] for rgb in images]
        )
        return [self.classes[i] for i in self.run(pixels)[0].argmax(axis=1)]

    @property
    def model(self) -> TransferModel:
        """The PyTorch model (for explanations), whatever backend predicts."""
        return self.pixel_model.model

    @property
    def temperature(self) -> float:
        """The card's fitted temperature; 1 (plain softmax) for an uncalibrated model."""
        return self.card.calibration.temperature if self.card.calibration else 1.0

    def predict_images(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        scale: ScaleEstimate | None = None,
    ) -> list[Prediction]:
        """Predict decoded images (any size; resized here) of one sample, rescaled by
        ``scale`` (by default :meth:`scale_of_images` of them)."""
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        if not images:
            return []
        factor = (scale or self.scale_of_images(images)).factor
        noted = [to_noted_pixels(image, self.card.preprocessing, factor) for image in images]
        pixels = np.stack([pixels for pixels, _ in noted])
        notes = [note for _, note in noted]
        return self.predictions_from_outputs(*self.run(pixels), names, notes)

    def predict_bytes(self, data: bytes, name: str) -> Prediction:
        """Predict an uploaded file; an unreadable one gives a prediction with ``error`` set."""
        try:
            image = decode_rgb(data, name=name, draft_size=self.card.preprocessing.draft_size)
        except ImageDecodeError as exc:
            return self.error_prediction(name, str(exc))
        return self.predict_images([image], [name])[0]

    def predict_paths(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 64,
        workers: int = 2,
        on_progress: Callable[[int], None] | None = None,
        scale: ScaleEstimate | None = None,
    ) -> list[Prediction]:
        """Predict files in input order, decoding in parallel; bad files become error entries.
        The files are one sample: see :meth:`outputs_for_paths` for ``scale``."""
        outputs = self.outputs_for_paths(
            paths, batch_size=batch_size, workers=workers, on_progress=on_progress, scale=scale
        )
        names = [str(paths[i]) for i in outputs.indices]
        predictions: dict[int, Prediction] = dict(
            zip(
                outputs.indices,
                self.predictions_from_outputs(
                    outputs.logits, outputs.features, names, outputs.notes_in_order()
                ),
                strict=True,
            )
        )
        for index, message in outputs.errors:
            predictions[index] = self.error_prediction(str(paths[index]), message)
        return [predictions[i] for i in range(len(paths))]

    def outputs_for_paths(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 64,
        workers: int = 2,
        on_progress: Callable[[int], None] | None = None,
        scale: ScaleEstimate | None = None,
    ) -> Outputs:
        """Raw (uncalibrated) logits and features of files, batched, decoded by ``workers``
        processes while the model runs.

        The files are taken as one sample, rescaled by ``scale`` (by default what
        :meth:`estimate_scale` finds for them) to the training images' magnification.

        ``batch_size`` is images per model call; with test-time views, ``batch_size // views``
        files make a batch. Large JPEGs are decoded in draft mode (see
        :attr:`~leukoscope.data.preprocess.Preprocessing.draft_size`).
        """
        factor = (scale or self.estimate_scale(paths)).factor
        dataset = self.dataset([Sample(Path(p)) for p in paths], factor)
        batch_size = max(1, batch_size // self.pixel_model.views)  # the model sees every view
        parallel = workers if math.ceil(len(paths) / batch_size) > 1 else 0
        loader = make_loader(dataset, batch_size=batch_size, workers=parallel)
        logits: list[np.ndarray] = []
        features: list[np.ndarray] = []
        indices: list[int] = []
        errors: list[tuple[int, str]] = []
        notes: dict[int, str] = {}
        for batch in loader:
            if len(batch.indices):
                batch_logits, batch_features = self.run(batch.images.numpy())
                logits.append(batch_logits)
                features.append(batch_features)
                indices.extend(batch.indices.tolist())
            errors.extend(batch.errors)
            notes.update(batch.notes)
            if on_progress is not None:
                on_progress(len(batch.indices) + len(batch.errors))
        if not indices:
            empty = np.empty((0, len(self.classes)), np.float32)
            return Outputs(empty, np.empty((0, self.model.num_features), np.float32), [], errors)
        return Outputs(np.concatenate(logits), np.concatenate(features), indices, errors, notes)

    def predictions_from_outputs(
        self,
        logits: np.ndarray,
        features: np.ndarray,
        names: Sequence[str],
        notes: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Calibrated probabilities, the top two classes and the abstention flag.

        Without calibration in the card nothing is flagged by the abstainer and ``score`` is
        the plain maximum softmax probability. An image with a preprocessing note (``notes``,
        aligned with ``names``) is flagged whatever its score.
        """
        notes = list(notes) if notes is not None else [None] * len(names)
        probabilities = softmax(np.asarray(logits, dtype=np.float64) / self.temperature, axis=1)
        if self.abstainer is None:
            scores, flagged = probabilities.max(axis=1), np.zeros(len(names), dtype=bool)
        else:
            scores = self.abstainer.scores(logits, features)
            flagged = scores < self.abstainer.threshold
        order = np.argsort(-probabilities, axis=1, kind="stable")
        predictions = []
        for name, probs, ranked, score, uncertain, note in zip(
            names, probabilities, order, scores, flagged, notes, strict=True
        ):
            second = ranked[1] if len(ranked) > 1 else None
            predictions.append(
                Prediction(
                    source=name,
                    label=self.classes[ranked[0]],
                    confidence=float(probs[ranked[0]]),
                    probabilities={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
                    runner_up=None if second is None else self.classes[second],
                    runner_up_probability=0.0 if second is None else float(probs[second]),
                    uncertain=bool(uncertain) or note is not None,
                    score=float(score),
                    note=note,
                )
            )
        return predictions

    def check_shift(self, predictions: Sequence[Prediction]) -> ShiftCheck | None:
        """Whether these predictions, as one sample, look unlike the training data (see
        :mod:`leukoscope.inference.shift`); None for a model without an abstention rule, which
        flags nothing to compare."""
        if self.card.abstention is None:
            return None
        flags = [p.uncertain for p in predictions if p.error is None]
        return check_shift(flags, 1 - self.card.abstention.target_coverage)

    def error_prediction(self, name: str, message: str) -> Prediction:
        """An unreadable input: no label, and flagged so that nothing counts it as a cell."""
        return Prediction(
            source=name,
            label=None,
            confidence=0.0,
            probabilities=dict.fromkeys(self.classes, 0.0),
            runner_up=None,
            runner_up_probability=0.0,
            uncertain=True,
            score=0.0,
            error=message,
        )


def _checked_session(path: Path, card: ModelCard, *, required: bool) -> Any | None:
    """An ORT session for ``path`` if it exists, loads and was exported from the card's weights.

    ``required``: raise instead of returning None (which means: use PyTorch).
    """
    problem = None
    if not path.is_file():
        problem = f"{path}: no ONNX export (run leukoscope export first)"
    else:
        try:
            session = onnx_session(path)
        except ImportError:
            problem = "the onnx backend needs onnxruntime, which is not installed"
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            problem = f"{path}: ONNX Runtime cannot load it ({exc})"
        else:
            metadata = session.get_modelmeta().custom_metadata_map
            views = card.test_time_views
            if metadata.get(WEIGHTS_SHA_KEY) != card.sha256:
                problem = f"{path} was exported from other weights than the model card's"
            elif int(metadata.get(VIEWS_KEY, 1)) != views:
                problem = f"{path} was exported without the card's {views} test-time views"
            else:
                return session
            problem += "; re-export it"
    if required:
        raise LeukoscopeError(problem)
    if path.exists():
        logger.warning("%s; using PyTorch", problem)
    return None
