"""The model card: everything needed to rebuild, use and judge a saved model, typed and versioned.

A card travels beside the weights as ``model_card.json``. It used to be a free-form dict read
by string keys in a dozen modules, so a misspelt or missing key surfaced far from the file that
caused it. Here it is a frozen dataclass with one nested section per concern, validated as a
whole when it is read (:func:`load_card` names the file and every bad field), and changed only
by building a new card (:meth:`ModelCard.replace`, :func:`update_card`), like torchvision's
weight metadata or timm's ``PretrainedCfg``.

Sections, in the order a model's life fills them:

=================== ======================================== ===============================
field               what                                     written by
=================== ======================================== ===============================
``arch``, ``head``  network to rebuild                       training
``preprocessing``   input size, normalisation, resampling    training (registry defaults)
``classes``         output classes, in order                 training
``validation``      best epoch's validation scores           training
``training``        provenance: manifest, seed, profile...   training
``sha256``          of ``model.safetensors``                 :func:`~.serialization.save_model`
``calibration``     temperature scaling                      ``calibrate``
``abstention``      abstention rule and its threshold        ``calibrate``
``test_time_views`` symmetric views averaged per image       ``calibrate`` (``--views``,
                    and which images need them               ``--extra-views-below``)
``test_metrics``    held-out scores                          ``release``
``release``         name, date, data, machine, command       ``release``
``adaptation``      source model, cells (by sha256), recipe  ``adapt``
``fallback``        the model that classifies the cells      ``fallback``
                    this one flags uncertain
=================== ======================================== ===============================

A model with BatchNorm layers also gets ``renormalised_abstention`` from ``calibrate``: the
abstention rule of the model renormalised on its own training cells, which the models
``adapt --unlabelled`` makes from it use.

Format history: ``leukoscope-model/1`` was the flat dict (``input_size``, ``mean``, ``std`` and
``interpolation`` at the top, ``metrics`` for the validation scores, a duplicate top-level
``manifest_sha256``). :func:`load_card` still reads it, converting it in memory, so models saved
by older versions keep working; ``save_card(load_card(path), path)`` rewrites such a file in
the current format (that is how the released models were migrated).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json

FORMAT = "leukoscope-model/2"
PREVIOUS_FORMAT = "leukoscope-model/1"
CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on the pooled features: Linear(C, hidden) -> ReLU -> Dropout ->
    Linear(hidden, N), the reference study's head; ``hidden=0`` gives Dropout -> Linear(C, N)."""

    hidden: int = 256
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise LeukoscopeError(
                f"invalid head: hidden must be >= 0 and dropout in [0, 1), got {self}"
            )


@dataclass(frozen=True)
class BestEpoch:
    """Validation scores of the epoch whose weights were kept (the best macro-F1)."""

    epoch: int
    phase: str
    val_loss: float
    val_accuracy: float
    val_macro_f1: float


@dataclass(frozen=True)
class TrainingRun:
    """Provenance: the settings that determine a training run's result.

    A resumed run must have exactly these (see :mod:`leukoscope.training.rundir`).
    ``profile`` is the training profile as the run recorded it, kept as JSON: it describes the
    past run and is never used to rebuild anything.
    """

    manifest: str
    manifest_sha256: str
    arch: str
    weights: str
    seed: int
    world_size: int
    profile: dict[str, Any]
    weights_file: str | None = None
    init_from: str | None = None
    """The saved model training started from (``train --init-from``), and the sha256 of its
    weights: a path says little once that model is re-released."""
    init_from_sha256: str | None = None
    teacher: str | None = None
    """The model distilled from (``train --teacher``), and the sha256 of its weights."""
    teacher_sha256: str | None = None


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on ``n`` images of ``split`` (expected calibration error
    before and after)."""

    temperature: float
    ece_before: float
    ece_after: float
    n: int
    split: str


@dataclass(frozen=True)
class Abstention:
    """The abstention rule (see :mod:`leukoscope.inference.abstention`): flag a prediction when
    its percentile score is below ``threshold``, chosen to keep ``target_coverage`` of the
    validation cells; the fitted statistics are in ``abstention.safetensors``, whose sha256 is
    ``stats_sha256``."""

    confidence: str
    threshold: float
    target_coverage: float
    stats_sha256: str
    score: Literal["percentile"] = "percentile"
    ood: Literal["mahalanobis"] = "mahalanobis"


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Bootstrap:
    """Percentile-bootstrap 95% intervals over images."""

    accuracy: tuple[float, float]
    macro_f1: tuple[float, float]
    resamples: int
    seed: int


@dataclass(frozen=True)
class TestMetrics:
    """Scores on the held-out test split, recorded at release."""

    __test__: ClassVar[bool] = False  # not a pytest test class despite its name

    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    n_images: int
    bootstrap_95ci: Bootstrap
    per_class: dict[str, ClassScores]

    @classmethod
    def from_evaluation(cls, metrics: dict[str, Any]) -> TestMetrics:
        """The card's summary of an evaluation's ``metrics.json`` (which also holds the
        confusion matrix, calibration, timing...: too much for a card)."""
        fields = ("accuracy", "macro_f1", "balanced_accuracy", "n_images")
        summary = {key: metrics[key] for key in (*fields, "bootstrap_95ci", "per_class")}
        return TypeAdapter(cls).validate_python(summary)


@dataclass(frozen=True)
class Release:
    """Where a released model came from: its run, data (by sha256), machine and command."""

    name: str
    date: str
    run: str
    manifest: str
    manifest_sha256: str
    command: str
    machine: dict[str, Any]


@dataclass(frozen=True)
class Adaptation:
    """Where an adapted model came from: the model it was fine-tuned or renormalised from (by
    sha256 of its weights), the cells (labelled: count per class; sha256 of every file relative
    to ``data``),
    the recipe, how its calibration was refitted (``recalibration``) and the cells rescaled
    (``magnification``)."""

    source: str
    source_sha256: str
    data: str
    cells: dict[str, int]
    files: dict[str, str]
    skipped: int
    steps: int
    batch_size: int
    trainable_stages: int
    seed: int
    recalibration: str
    date: str
    command: str
    magnification: float = 1.0
    """The factor the cells were rescaled by to the source's training magnification
    (:class:`~leukoscope.data.preprocess.SampleScale`)."""
    renormalised: int = 0
    """Cells the BatchNorm statistics were re-estimated on (0: the source's kept)."""
    out_of_fold_accuracy: float | None = None
    """Accuracy on the labelled cells when each is classified by a model adapted without it
    (the out-of-fold predictions the calibration is refitted on); None without folds. Each
    fold's model learned from fewer cells than the adapted model. The cells' class mix is the
    labeller's (often a few per class), not a smear's, so :attr:`out_of_fold_recall` says
    more about the lab's next samples."""
    out_of_fold_recall: dict[str, float] = dataclasses.field(default_factory=dict)
    """The same, per class: the share of each class's cells called that class."""


@dataclass(frozen=True)
class Fallback:
    """A second model for the cells this one flags uncertain: a fast model backed by an
    accurate, slower one, which then runs on those cells only. The cells stay flagged for
    review; the fallback's call is the one proposed.

    On the 5-class test split the 128-px SqueezeNet made 17 errors alone; with the cells it
    flagged (7.5%) classified by the 4-view EfficientNet, 6, as many as 99.5% accuracy allows
    (``leukoscope evaluate``, ``benchmarks/accuracy.py``; docs/results.md).
    """

    model: str
    """Its directory, relative to this model's directory (``../wbc5-efficientnet_lite0``)."""
    sha256: str
    """Of its ``model.safetensors``: the predictor refuses another model found at the path."""


@dataclass(frozen=True)
class ModelCard:
    """A saved model's card (see the module docstring for the sections).

    Parameters
    ----------
    arch
        Registry name of the backbone.
    classes
        Output classes, in the order of the logits.
    head
        The classifier head the weights have.
    preprocessing
        How images become the model's input; prediction must repeat what training did.
    sha256
        Of ``model.safetensors``; set by :func:`~leukoscope.models.serialization.save_model`
        (empty before the weights are saved).
    test_time_views
        How many symmetric views of each image the model averages (1, 4 or 8).
    extra_views_below
        With test-time views: an image whose first view alone gives a calibrated confidence
        of at least this is classified from that view, and the other views are computed only
        for the images below it (the export then holds the one-view network; the predictor
        turns the images). None: every view of every image. On the 8-class EfficientNet's
        validation split, 0.98 left about one image in twenty for the other three views and
        changed no prediction of the four views' (``benchmarks/views.py``).
    fallback
        The model that classifies the cells this one flags uncertain (see :class:`Fallback`).
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    arch: str
    classes: tuple[str, ...]
    head: HeadConfig
    preprocessing: Preprocessing
    sha256: str = ""
    test_time_views: int = 1
    extra_views_below: float | None = None
    validation: BestEpoch | None = None
    training: TrainingRun | None = None
    calibration: Calibration | None = None
    abstention: Abstention | None = None
    renormalised_abstention: Abstention | None = None
    test_metrics: TestMetrics | None = None
    release: Release | None = None
    adaptation: Adaptation | None = None
    fallback: Fallback | None = None

    def __post_init__(self) -> None:
        below = self.extra_views_below
        if below is not None and (self.test_time_views == 1 or not 0.0 < below <= 1.0):
            raise LeukoscopeError(
                f"extra_views_below {below} needs test-time views and a confidence in (0, 1]"
            )

    @property
    def graph_views(self) -> int:
        """The views the network computes per image, as exported: all the test-time views, or
        with :attr:`extra_views_below` the first only (the predictor adds the others where
        they are needed, :func:`~leukoscope.inference.runtime.with_extra_views`)."""
        return 1 if self.extra_views_below is not None else self.test_time_views

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (``dataclasses.replace``), validated like a card
        read from disk, so a wrongly typed change fails here and not in the next reader."""
        changed = dataclasses.replace(self, **changes)
        return ModelCard.from_json(
            {"format": FORMAT, **_ADAPTER.dump_python(changed, mode="json", warnings=False)},
            "changed model card",
        )

    def to_json(self) -> dict[str, Any]:
        """The card as ``model_card.json`` holds it (sections not filled in are left out)."""
        data: dict[str, Any] = _ADAPTER.dump_python(self, mode="json")
        return {"format": FORMAT} | {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: Any, source: str = "model card") -> ModelCard:
        """Validate parsed JSON (this format or the previous one) into a card.

        Raises
        ------
        LeukoscopeError
            Naming ``source`` and every problem: a foreign or unknown format, a missing or
            mistyped field, an unknown one.
        """
        if not isinstance(data, dict):
            raise LeukoscopeError(f"{source}: not a leukoscope model card (not a JSON object)")
        version = data.get("format")
        if version == PREVIOUS_FORMAT:
            data = _from_previous_format(data)
        elif version != FORMAT:
            raise LeukoscopeError(
                f"{source}: not a leukoscope model card (format {version!r}; this version "
                f"reads {FORMAT} and {PREVIOUS_FORMAT})"
            )
        fields = {key: value for key, value in data.items() if key != "format"}
        try:
            return _ADAPTER.validate_python(fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'card'}: {error['msg']}"
                for error in exc.errors()
            )
            raise LeukoscopeError(f"{source}: invalid {FORMAT} model card ({problems})") from None
        except LeukoscopeError as exc:  # a section's own check, e.g. an impossible head
            raise LeukoscopeError(f"{source}: invalid model card ({exc})") from None


_ADAPTER: TypeAdapter[ModelCard] = TypeAdapter(ModelCard)


def _from_previous_format(old: dict[str, Any]) -> dict[str, Any]:
    """A ``leukoscope-model/1`` card's dict in the current layout (unknown keys are kept, so
    validation still reports them)."""
    moved = {"input_size", "mean", "std", "interpolation", "metrics", "manifest_sha256", "format"}
    new = {key: value for key, value in old.items() if key not in moved}
    new["preprocessing"] = {
        key: old[key] for key in ("input_size", "mean", "std", "interpolation") if key in old
    }
    if "metrics" in old and isinstance(old["metrics"], dict):
        new["validation"] = {k: v for k, v in old["metrics"].items() if k != "split"}
    return new


def card_path(model: str | Path) -> Path:
    """The card of a model directory, or of the weights file in it.

    Raises
    ------
    LeukoscopeError
        When ``model`` does not exist (not a card path of some other folder).
    """
    path = Path(model)
    if not path.exists():
        raise LeukoscopeError(f"{path}: no such model file or directory")
    return path / CARD_NAME if path.is_dir() else path.with_name(CARD_NAME)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a card file (current or previous format).

    Raises
    ------
    LeukoscopeError
        Naming the file, when it cannot be read, is not JSON, or is not a valid card.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeukoscopeError(f"{path}: cannot read the model card ({exc})") from None
    return ModelCard.from_json(data, str(path))


def save_card(card: ModelCard, path: str | Path) -> None:
    """Write ``card`` to ``path`` atomically, in the current format."""
    atomic_write_json(path, card.to_json())


def update_card(model: str | Path, **changes: Any) -> ModelCard:
    """Replace fields of a saved model's card, atomically, and return the new card.

    The weights, and so the card's sha256 of them, are untouched: use this for what is fitted
    or measured after training (calibration, abstention, views, test metrics, release).
    """
    path = card_path(model)
    card = load_card(path).replace(**changes)
    save_card(card, path)
    return card


def set_fallback(model: str | Path, fallback: str | Path | None) -> ModelCard:
    """Name ``fallback`` (a model directory) in ``model``'s card as the model for the cells it
    flags uncertain, by its path relative to ``model`` and its weights' sha256; None removes
    it. Returns the new card, written atomically.

    Raises
    ------
    LeukoscopeError
        When either card cannot be read, ``model`` flags no cells (not calibrated), or
        ``fallback`` is ``model`` itself, uncalibrated, for other classes, or has a fallback
        of its own (one step only: every uncertain cell costs at most one more model).
    """
    path = card_path(model)
    card = load_card(path)
    if fallback is None:
        return update_card(model, fallback=None)
    other_path = card_path(fallback)
    other = load_card(other_path)
    problem = None
    if card.abstention is None:
        problem = f"{path}: flags no cell uncertain (calibrate it first)"
    elif other_path.resolve() == path.resolve():
        problem = f"{other_path}: a model cannot be its own fallback"
    elif other.classes != card.classes:
        problem = f"{other_path}: classes {list(other.classes)}, not {list(card.classes)}"
    elif other.calibration is None or not other.sha256:
        problem = f"{other_path}: not calibrated (calibrate or release it first)"
    elif other.fallback is not None:
        problem = f"{other_path}: has a fallback of its own"
    if problem is not None:
        raise LeukoscopeError(problem)
    relative = os.path.relpath(other_path.parent.resolve(), path.parent.resolve())
    return update_card(model, fallback=Fallback(Path(relative).as_posix(), other.sha256))
