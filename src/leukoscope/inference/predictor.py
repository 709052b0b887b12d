"""Predictions for cell images from a saved model, on OpenVINO, ONNX Runtime or PyTorch.

One :class:`Predictor` serves every consumer (the commands, the demo, the web app, adaptation).
It reads uint8 RGB pixels made by :mod:`leukoscope.data.preprocess` from the model card's
``preprocessing`` and gets logits and pooled features from a backend: an exported model
(:mod:`leukoscope.inference.runtime`) or the PyTorch model
(:class:`~leukoscope.inference.pixel_model.PixelModel`). Probabilities are temperature-scaled
and the abstention flag is set with the calibration stored in the model card (see
``leukoscope calibrate``).

With an export, this module and what it imports never load torch, torchvision or timm, whose
import alone took 4.5 s on two cores: one image is classified in well under 2 s, start-up
included (``benchmarks/inference.py``). The PyTorch model is loaded on first use of
:attr:`Predictor.pixel_model`, by the torch backend and by explanations.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from leukoscope.data.batches import pixel_batches
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import (
    LABELLED_SCALE_CELLS,
    SCALE_CELLS,
    UNSCALED,
    ScaleEstimate,
    estimate_scale,
    read_rgb,
    spread,
    to_noted_pixels,
)
from leukoscope.errors import ImageDecodeError, LeukoscopeError
from leukoscope.inference.abstention import Abstainer
from leukoscope.inference.runtime import (
    BACKENDS,
    FOLDER_EXPORTS,
    ONNX_NAME,
    EngineMissing,
    Export,
    ModelFn,
    engines_for,
    open_export,
    with_extra_views,
)
from leukoscope.inference.shift import ShiftCheck, advice, check_shift
from leukoscope.inference.softmax import softmax
from leukoscope.models.card import CARD_NAME, WEIGHTS_NAME, ModelCard, load_card

if TYPE_CHECKING:
    from leukoscope.data.datasets import CellImageDataset, Sample
    from leukoscope.inference.pixel_model import PixelModel
    from leukoscope.models import TransferModel

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and ``label`` None) when it could not be read,
    ``note`` (with ``uncertain``) when preprocessing could not do what the model expects, e.g.
    find the cell to frame; ``fallback`` when the model flagged it uncertain and its card's
    fallback model made this call (see :class:`~leukoscope.models.card.Fallback`; the flag
    and score stay the model's)."""

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
    fallback: bool = False

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
    """A loaded model ready to classify images; build it with :meth:`Predictor.load`.

    ``source`` is what runs (a model directory, or the export that runs); ``weights`` the
    ``model.safetensors`` the PyTorch model is loaded from when it is first needed (None for a
    standalone export, which then cannot explain its predictions); ``precision`` what the
    backend computes in (:attr:`~leukoscope.inference.runtime.Export.precision`), which
    reports record beside the backend; ``fallback_dir`` the card's fallback model, which
    classifies the cells this one flags uncertain (None: it keeps them), run by
    ``fallback_backend`` (see :meth:`fallback_for`); ``job_files`` how many cell images the
    job holds, when the caller said (None: unknown, e.g. a server's).
    """

    card: ModelCard
    backend: str
    run: ModelFn
    abstainer: Abstainer | None
    source: Path | None = None
    weights: Path | None = None
    precision: str = "fp32"
    fallback_dir: Path | None = None
    fallback_backend: str = "auto"
    job_files: int | None = None
    _fallback: Predictor | None = field(default=None, repr=False)
    _pixel_model: PixelModel | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        below = self.card.extra_views_below
        if below is not None:  # uncalibrated (being calibrated): every view of every image
            below = below if self.card.calibration is not None else math.inf
            self.run = with_extra_views(self.run, self.views, self.temperature, below)

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        *,
        backend: str = "auto",
        fallback: bool = True,
        files: int | None = None,
    ) -> Predictor:
        """Load a model directory, its ``model.safetensors``, or an exported ``.onnx`` file,
        with the card's fallback model (in its own ``auto`` engine, or PyTorch with ``torch``)
        unless ``fallback`` is False. ``files``, when known, is how many cell images the job
        holds: a small job starts sooner in ONNX Runtime
        (:data:`~leukoscope.inference.runtime.QUICK_START_FILES`).

        ``auto`` runs the export beside the weights (``model.int8.onnx``, else
        ``model.onnx``) in the first engine of
        :func:`~leukoscope.inference.runtime.engines_for` the model's architecture that is
        installed, when the export was made from these very weights (and, for an int8 export
        with 8-bit weights, when the CPU computes it exactly); otherwise PyTorch.
        ``onnx`` (ONNX Runtime) and ``openvino`` require an export. An ``.onnx`` file is a
        model of its own: it carries its card and abstention statistics, and the card and
        statistics beside it, when it sits in a model directory, take precedence (they may
        have been recalibrated since).
        """
        if backend not in BACKENDS:
            raise LeukoscopeError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
        path = Path(model_path)
        if path.suffix == ".onnx":
            if backend == "torch":
                raise LeukoscopeError(f"{path}: an .onnx model needs a backend other than torch")
            predictor = cls._from_export(path, backend, files)
            model_dir = path.parent
        else:
            model_dir = path.parent if path.suffix == ".safetensors" else path
            predictor = cls._from_folder(model_dir, backend, files)
        if fallback and predictor.card.fallback is not None:
            predictor.fallback_dir = _fallback_dir(model_dir, predictor.card)
            # It runs in its own best engine (e.g. OpenVINO for an EfficientNet): ``backend``
            # names the engine of the model the user named, except torch, which needs no export.
            predictor.fallback_backend = backend if backend == "torch" else "auto"
        predictor.job_files = files
        return predictor

    @classmethod
    def _from_folder(cls, model_dir: Path, backend: str, files: int | None) -> Predictor:
        """A predictor for a model directory: its export, if one suits, else PyTorch."""
        if not model_dir.is_dir():
            raise LeukoscopeError(f"{model_dir}: no such model directory")
        card = load_card(model_dir / CARD_NAME)
        abstainer = Abstainer.load(model_dir, card) if card.abstention else None
        weights = model_dir / WEIGHTS_NAME
        if backend != "torch":
            export = _folder_export(model_dir, card, backend, files)
            if export is not None:
                return cls(
                    card,
                    export.engine,
                    export.run,
                    abstainer,
                    export.path,
                    weights,
                    export.precision,
                )
        from leukoscope.models import load_model

        model, card = load_model(weights)
        predictor = cls.from_model(model, card, abstainer)
        predictor.source, predictor.weights = model_dir, weights
        return predictor

    @classmethod
    def _from_export(cls, path: Path, backend: str, files: int | None) -> Predictor:
        """A predictor for an export, in its model directory or on its own (``auto`` tries
        the engines in the order for the architecture of the card beside it, if there is one,
        else in the default order)."""
        card_file = path.parent / CARD_NAME
        beside = load_card(card_file) if card_file.is_file() else None
        export = _open_first(path, engines_for(backend, beside.arch if beside else None, files))
        if (reason := export.unsuited()) is not None:
            logger.warning("%s: its classes may differ from the model's", reason)
        if beside is not None:
            card = beside
            export.check(card, str(card_file))
            abstainer = Abstainer.load(path.parent, card) if card.abstention else None
            weights: Path | None = path.parent / WEIGHTS_NAME
        else:
            card = export.card()
            export.check(card, "its embedded model card")
            abstainer = None
            if card.abstention:
                abstainer = Abstainer.from_bytes(export.abstention_stats(), card, str(path))
            weights = None
        return cls(card, export.engine, export.run, abstainer, path, weights, export.precision)

    @classmethod
    def from_model(
        cls, model: TransferModel, card: ModelCard, abstainer: Abstainer | None = None
    ) -> Predictor:
        """A PyTorch predictor for a model in memory (e.g. to calibrate it afresh)."""
        from leukoscope.inference.pixel_model import PixelModel, torch_runner

        pixel_model = PixelModel.from_card(model, card)
        return cls(card, "torch", torch_runner(pixel_model), abstainer, _pixel_model=pixel_model)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    @property
    def input_size(self) -> int:
        return self.card.preprocessing.input_size

    @property
    def views(self) -> int:
        """Symmetric views of each image the model averages (each costs a model pass; with
        the card's ``extra_views_below``, only the images that need them get all of them)."""
        return self.card.test_time_views

    def dataset(self, samples: Sequence[Sample], factor: float = 1.0) -> CellImageDataset:
        """``samples`` decoded as this predictor decodes files, as a PyTorch dataset: the uint8
        RGB pixels of :func:`~leukoscope.data.preprocess.pixels_dataset` for the card's
        preprocessing (rescaled by their sample's ``factor``)."""
        from leukoscope.data.preprocess import pixels_dataset

        return pixels_dataset(samples, self.card.preprocessing, factor)

    def estimate_scale(
        self, paths: Sequence[str | Path], labels: Sequence[str] | None = None
    ) -> ScaleEstimate:
        """How much the files of one sample are rescaled to the training images' magnification
        (:class:`~leukoscope.data.preprocess.SampleScale`), from at most
        :data:`~leukoscope.data.preprocess.SCALE_CELLS` of them spread evenly; unreadable
        files are left out here and reported by the prediction itself. With the files' true
        ``labels`` (labelled cells), each cell is measured against its own class instead of
        this model's call, on up to
        :data:`~leukoscope.data.preprocess.LABELLED_SCALE_CELLS` of them."""
        scale = self.card.preprocessing.sample_scale
        if scale is None or len(paths) < scale.min_cells:
            return UNSCALED
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        draft_size = self.card.preprocessing.draft_size
        most = SCALE_CELLS if labels is None else LABELLED_SCALE_CELLS
        decoded = [(i, read_rgb(paths[i], draft_size)) for i in spread(range(len(paths)), most)]
        readable = [(i, rgb) for i, rgb in decoded if rgb is not None]
        return estimate_scale(
            [rgb for _, rgb in readable],
            scale,
            self._classify_rescaled,
            None if labels is None else [labels[i] for i, _ in readable],
        )

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
    def pixel_model(self) -> PixelModel:
        """The PyTorch model taking pixels, loaded from :attr:`weights` on first use."""
        if self._pixel_model is None:
            from leukoscope.inference.pixel_model import PixelModel
            from leukoscope.models import load_model

            if self.weights is None or not self.weights.is_file():
                raise LeukoscopeError(
                    f"{self.source}: this needs the PyTorch weights ({WEIGHTS_NAME}) beside "
                    "the model, which are not there; use the model directory"
                )
            model, card = load_model(self.weights)
            if card.sha256 != self.card.sha256:
                raise LeukoscopeError(f"{self.weights}: not the weights of the loaded model")
            self._pixel_model = PixelModel.from_card(model, self.card)
        return self._pixel_model

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
        *,
        earlier: Sequence[bool] = (),
    ) -> list[Prediction]:
        """Predict decoded images (any size; resized here) of one sample, rescaled by
        ``scale`` (by default :meth:`scale_of_images` of them); the fallback model
        (:meth:`fallback_for`), if any, classifies those this model flags uncertain.

        ``earlier`` holds this model's uncertain flags on the sample's cells classified
        before (the web app's stored cells): whether the sample looks shifted, in which case
        nothing is referred, is judged on them with these images' own (see
        :meth:`_referred`), so that a sample uploaded a few cells at a time is judged as a
        whole."""
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        if not images:
            return []
        scale = scale or self.scale_of_images(images)
        noted = [to_noted_pixels(image, self.card.preprocessing, scale.factor) for image in images]
        pixels = np.stack([pixels for pixels, _ in noted])
        notes = [note for _, note in noted]
        return self._referred(
            self.predictions_from_outputs(*self.run(pixels), names, notes),
            lambda fallback, chosen: fallback.predict_images(
                [images[i] for i in chosen], [names[i] for i in chosen], scale
            ),
            earlier,
        )

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
        The files are one sample: see :meth:`outputs_for_paths` for ``scale``. The fallback
        model (:meth:`fallback_for`), if any, classifies the files this model flags uncertain."""
        scale = scale or self.estimate_scale(paths)
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
        return self.refer_paths(
            [predictions[i] for i in range(len(paths))],
            paths,
            scale,
            batch_size=batch_size,
            workers=workers,
        )

    def refer_paths(
        self,
        predictions: Sequence[Prediction],
        paths: Sequence[str | Path],
        scale: ScaleEstimate,
        *,
        batch_size: int = 64,
        workers: int = 2,
    ) -> list[Prediction]:
        """``predictions`` of ``paths`` (aligned) with the readable files this model flagged
        uncertain classified again by the fallback model (:meth:`fallback_for`), rescaled by
        the same ``scale``, and marked ``fallback``; unchanged without one. Files with a
        preprocessing note stay: the fallback would find no more than this model did."""
        return self._referred(
            predictions,
            lambda fallback, chosen: fallback.predict_paths(
                [paths[i] for i in chosen], batch_size=batch_size, workers=workers, scale=scale
            ),
        )

    def fallback_for(self, cells: int) -> Predictor | None:
        """The predictor of the card's fallback model (None: none), loaded when a sample's
        ``cells`` flagged cells first need it: a sample this model is sure of never pays for
        loading it. In a job of known size (:attr:`job_files`) it opens in the engine for a job
        of that many cells (:func:`~leukoscope.inference.runtime.engines_for`: fewer than
        :data:`~leukoscope.inference.runtime.QUICK_START_FILES` start sooner in ONNX
        Runtime); otherwise, as for a server that runs until stopped, in its arch's faster
        engine. Later samples reuse it.

        Raises
        ------
        LeukoscopeError
            When the model at :attr:`fallback_dir` is not the one the card names, or cannot
            be loaded (e.g. removed since).
        """
        if self._fallback is None and self.fallback_dir is not None:
            files = None if self.job_files is None else cells
            self._fallback = _load_fallback(
                self.fallback_dir, self.card, self.fallback_backend, files
            )
        return self._fallback

    def _referred(
        self,
        predictions: Sequence[Prediction],
        classify: Callable[[Predictor, list[int]], list[Prediction]],
        earlier: Sequence[bool] = (),
    ) -> list[Prediction]:
        """``predictions`` with the calls of the readable, uncertain ones without a
        preprocessing note replaced by ``classify(fallback, their positions)``, marked
        ``fallback``: label and probabilities the fallback's, flag and score this model's.

        A second opinion never clears a flag: with the fallback's own flags on these cells, a
        cell that each model found plausible in turn would pass unflagged, and the 5-class
        SqueezeNet backed by the EfficientNet flagged fewer of PBC's immature granulocytes (a
        class neither knows) than either model alone.

        Nothing is referred in a sample that looks unlike the training data
        (:meth:`check_shift` of these predictions, with the flags of the sample's ``earlier``
        cells): there the fallback's calls are no better. On another lab's
        rapid stain (tecom) the 5-class SqueezeNet flagged most cells and called 43% right,
        and with the EfficientNet's calls on the flagged ones 15% (docs/results.md).
        """
        result = list(predictions)
        if self.fallback_dir is None:
            return result
        if (shift := self.check_shift(result, earlier=earlier)) is not None and shift.shifted:
            return result
        chosen = [
            i
            for i, p in enumerate(predictions)
            if p.uncertain and p.error is None and p.note is None
        ]
        if chosen and (fallback := self.fallback_for(len(chosen))) is not None:
            for i, again in zip(chosen, classify(fallback, chosen), strict=True):
                result[i] = replace(
                    again, uncertain=True, score=predictions[i].score, fallback=True
                )
        return result

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
        threads while the model runs (see :func:`~leukoscope.data.batches.pixel_batches`).

        The files are taken as one sample, rescaled by ``scale`` (by default what
        :meth:`estimate_scale` finds for them) to the training images' magnification.

        ``batch_size`` is images per model call; with test-time views in the network
        (:attr:`~leukoscope.models.card.ModelCard.graph_views`), ``batch_size // views`` files
        make a batch. Large JPEGs are decoded in draft mode (see
        :attr:`~leukoscope.data.preprocess.Preprocessing.draft_size`).
        """
        factor = (scale or self.estimate_scale(paths)).factor
        batch_size = max(1, batch_size // self.card.graph_views)  # the network sees each view
        logits: list[np.ndarray] = []
        features: list[np.ndarray] = []
        indices: list[int] = []
        errors: list[tuple[int, str]] = []
        notes: dict[int, str] = {}
        batches = pixel_batches(
            paths, self.card.preprocessing, batch_size=batch_size, workers=workers, factor=factor
        )
        for batch in batches:
            if batch.indices:
                batch_logits, batch_features = self.run(batch.pixels)
                logits.append(batch_logits)
                features.append(batch_features)
                indices.extend(batch.indices)
            errors.extend(batch.errors)
            notes.update(batch.notes)
            if on_progress is not None:
                on_progress(len(batch.indices) + len(batch.errors))
        if not indices:
            empty = np.empty((0, len(self.classes)), np.float32)
            return Outputs(empty, np.empty((0, 0), np.float32), [], errors)
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
        if not len(names):  # nothing readable: no features to measure either
            return []
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

    def check_shift(
        self,
        predictions: Sequence[Prediction],
        on_edge: Sequence[bool] | None = None,
        *,
        earlier: Sequence[bool] = (),
    ) -> ShiftCheck | None:
        """Whether these predictions, as one sample, look unlike the training data (see
        :func:`~leukoscope.inference.shift.check_shift`, which leaves out the cells
        ``on_edge``), counted with ``earlier``, this model's uncertain flags on the sample's
        cells classified before (none on an edge); None for a model without an abstention
        rule, which flags nothing to compare."""
        if self.card.abstention is None:
            return None
        edges = [False] * len(predictions) if on_edge is None else on_edge
        pairs = zip(predictions, edges, strict=True)
        readable = [(p, edge) for p, edge in pairs if p.error is None]
        return check_shift(
            [*earlier, *(p.uncertain for p, _ in readable)],
            1 - self.card.abstention.target_coverage,
            self.shift_advice,
            [*(False for _ in earlier), *(edge for _, edge in readable)],
        )

    @property
    def renormalisable(self) -> bool:
        """Whether the model can be renormalised on a sample's cells
        (:func:`~leukoscope.training.adapt.renormalised_for_sample`): its PyTorch weights are
        at hand and its card carries the abstention rule for renormalised models (models with
        BatchNorm, calibrated: the released EfficientNets)."""
        weights = self.weights
        return (
            self.card.renormalised_abstention is not None
            and weights is not None
            and weights.is_file()
        )

    @property
    def shift_advice(self) -> str:
        """What may help when a sample looks shifted: the adaptation left to try for this
        model (:func:`~leukoscope.inference.shift.advice`)."""
        adaptation = self.card.adaptation
        return advice(
            renormalisable=self.card.renormalised_abstention is not None,
            renormalised=adaptation is not None and bool(adaptation.renormalised),
        )

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


def _fallback_dir(model_dir: Path, card: ModelCard) -> Path | None:
    """Where ``card``'s fallback model is, relative to ``model_dir``, after a check of its card
    (its weights and classes); None, with a warning, when it is not there.

    Raises
    ------
    LeukoscopeError
        When the model there is not the one the card names (other weights or classes).
    """
    assert card.fallback is not None
    path = Path(os.path.normpath(model_dir / card.fallback.model))
    if not (path / CARD_NAME).is_file():
        logger.warning(
            "%s: its fallback model %s is not there; the cells it flags uncertain keep its calls",
            model_dir,
            path,
        )
        return None
    _check_fallback(path, load_card(path / CARD_NAME), card)
    return path


def _check_fallback(path: Path, found: ModelCard, card: ModelCard) -> None:
    """Raise unless ``found``, the card at ``path``, is the fallback ``card`` names."""
    assert card.fallback is not None
    if found.sha256 != card.fallback.sha256 or found.classes != card.classes:
        raise LeukoscopeError(
            f"{path}: not the fallback model its model's card names (other weights or "
            "classes); set it again with leukoscope fallback"
        )


def _load_fallback(path: Path, card: ModelCard, backend: str, files: int | None) -> Predictor:
    """The predictor of ``card``'s fallback model at ``path`` for a job of ``files`` cells
    (None: unknown), without a fallback of its own, checked again (the folder may have
    changed since the card was read)."""
    fallback = Predictor.load(path, backend=backend, fallback=False, files=files)
    _check_fallback(path, fallback.card, card)
    return fallback


def _open_first(path: Path, engines: Sequence[str]) -> Export:
    """``path`` opened by the first of ``engines`` that is installed."""
    missing: EngineMissing | None = None
    for engine in engines:
        try:
            return open_export(path, engine)
        except EngineMissing as exc:
            missing = exc
    assert missing is not None
    raise missing


def _folder_export(
    model_dir: Path, card: ModelCard, backend: str, files: int | None
) -> Export | None:
    """The first export of :data:`~leukoscope.inference.runtime.FOLDER_EXPORTS` in a model
    directory that loads and was made from the card's weights with its views.

    None when there is none (PyTorch then runs the model), with a warning for each export that
    could not be used; for a backend other than ``auto``, an error naming the files instead.
    """
    required = backend != "auto"
    candidates = [model_dir / name for name in FOLDER_EXPORTS if (model_dir / name).is_file()]
    if not candidates:
        if not required:
            return None
        raise LeukoscopeError(
            f"{model_dir / ONNX_NAME}: no such exported model (run leukoscope export first)"
        )
    problems, unsuited = [], []
    for path in candidates:
        try:
            export = _open_first(path, engines_for(backend, card.arch, files))
            export.check(card, str(model_dir / CARD_NAME))
        except LeukoscopeError as exc:
            problems.append(str(exc))
            continue
        if (reason := export.unsuited()) is not None:
            unsuited.append(reason)
            continue
        for problem in problems:
            logger.warning("%s; using %s", problem, path.name)
        for reason in unsuited:
            logger.info("%s; using %s", reason, path.name)
        return export
    if required:
        raise LeukoscopeError("; ".join(problems + unsuited))
    logger.warning("%s; using PyTorch", "; ".join(problems + unsuited))
    return None
