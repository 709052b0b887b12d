"""Lab adaptation: fit a released model to a new lab's cells, labelled (a handful) or not.

A model trained on one lab's images does poorly on another lab's (other stain, camera and
crop: 24-59% on the two shared external sets, see ``benchmarks/external.py``). A few labelled
cells of the new lab fix much of it (Chossegros et al., J Pathol Inform 2024: over 80% on eight
unseen datasets with at most 100 labelled images each). :func:`adapt` does this on two CPU
cores in minutes:

- the head and the top :attr:`AdaptOptions.trainable_stages` backbone stages learn (by
  default all but the first of the released models' nine, at learning rates halving with each
  stage down), the rest stays frozen (run once per step under ``no_grad``). Another lab's
  stain and optics change what the lower stages see, so they must adapt too: with 10 cells
  per class, 150 steps of all but the first stage at 5e-4 scored 80.5% and 87.6% on the rest
  of cellavision and tecom (3 seeds), against 74.1% and 81.4% for 60 steps of the top two at
  1e-3 and 74.7% and 85.9% for 150 steps of the top four at 1e-3 (``benchmarks/adapt.py
  --k 10``, ``benchmarks/results/adapt-k10-*.json``, 2026-12-06; the only three recipes
  tried);
- every step draws a class-balanced batch (each class equally often whatever its count) and
  shows each cell in a new lab-robust view (:data:`~leukoscope.training.profiles.LAB_ROBUST`
  plus the dihedral turns): a few cells must be seen many ways;
- a fixed number of steps: there is no validation set to stop on;
- the loss only covers the classes the data has, and the output rows of the classes it lacks
  are restored afterwards, so those classes keep the source model's head weights;
- images go through :mod:`leukoscope.data.preprocess` exactly as in training and prediction;
  BatchNorm statistics stay frozen (a batch of a few cells would ruin them).

Without labels, :func:`renormalise` re-estimates the BatchNorm statistics on the lab's own cells
and changes nothing else (AdaBN: Li et al., "Revisiting Batch Normalization for Practical Domain
Adaptation", 2016): a stain or camera shift moves every layer's activations, and the statistics
the model normalises them with are the source lab's. On tecom's 300 rapid-stain cells this alone
took the 4-view 5-class EfficientNet from 13% to 64%, and the 8-class one from 11% to 46%; on
cellavision, whose colours are close to PBC's, it changed little (71% to 72%, and 63% to 63%)
(``python benchmarks/external.py --renormalise``). On PBC's own test split it costs 1.2 points
(99.59% to 98.37%), so it is for another lab's images, and only models with BatchNorm layers
(the EfficientNets, not the SqueezeNets) have any. The renormalised model's abstention rule is
the one its source carries for that purpose (:func:`fit_renormalised_reference`). ``predict``
and ``differential`` renormalise by themselves, on the sample they classify, when it looks
unlike the training data as a whole (:func:`renormalised_for_sample`; field images:
:func:`renormalised_for_fields`; the web app does it when a reviewer asks,
:func:`renormalised_for_images`): that gate keeps the training lab's samples, where it would
cost the point, as they were.

Recalibration (see :func:`recalibrate`) never uses predictions of cells a model trained on
unless the card says so: with enough cells the temperature and the abstention threshold are
fitted on out-of-fold predictions (the adaptation repeated on each fold's complement).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import StratifiedKFold
from torch import nn
from torch.nn import functional as F

from leukoscope.data.datasets import Sample, samples_from_folder, samples_from_paths
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import (
    UNSCALED,
    Augmentation,
    Preprocessing,
    ScaleEstimate,
    create_transform,
    pixels_dataset,
    spread,
    to_noted_pixels,
)
from leukoscope.errors import ImageDecodeError, LeukoscopeError
from leukoscope.fileio import sha256_file
from leukoscope.inference.abstention import Abstainer
from leukoscope.inference.calibration import expected_calibration_error, fit_temperature
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import ONNX_NAME
from leukoscope.inference.shift import MIN_RENORMALISE_CELLS, SAMPLE_CELLS
from leukoscope.inference.softmax import softmax
from leukoscope.models import ModelCard, TransferModel, load_model, save_model
from leukoscope.models.card import Adaptation, Calibration
from leukoscope.models.serialization import weights_sha256
from leukoscope.training.chain import ModelChain
from leukoscope.training.optim import build_scheduler, param_groups
from leukoscope.training.profiles import LAB_ROBUST, Phase

if TYPE_CHECKING:
    from leukoscope.cells.crops import Cuts


@dataclass(frozen=True)
class AdaptOptions:
    """How a model is adapted.

    Parameters
    ----------
    steps
        Optimiser steps (one class-balanced batch each).
    batch_size
        Cells per step (drawn with replacement: a few cells fill a batch in several views).
    lr
        Peak learning rate of the head; the stages below learn at ``lr * 0.5**depth``.
    trainable_stages
        Top backbone stages that learn besides the head.
    seed
        Seeds the batches, the views and the folds.
    folds
        Out-of-fold recalibration folds (at most the smallest class's count); 0 keeps the
        source's temperature and fits the abstention statistics in-sample (see
        :func:`recalibrate`).
    augmentation
        The random views of each cell.
    labelled
        False: the cells' labels are not used (any folder of the lab's images will do) and
        only the normalisation statistics are re-estimated; the steps, stages, folds and views
        above then play no part.
    """

    steps: int = 150
    batch_size: int = 32
    lr: float = 5e-4
    trainable_stages: int = 8
    seed: int = 0
    folds: int = 3
    augmentation: Augmentation = LAB_ROBUST
    labelled: bool = True


MIN_FOLD_CELLS = 2
"""Cells per class every fold's training part needs; fewer and the source temperature stays."""


@dataclass(frozen=True)
class Cells:
    """The decoded adaptation cells: uint8 pixels (N, H, W, 3) as the predictor sees them."""

    pixels: torch.Tensor
    labels: np.ndarray
    paths: list[Path]
    skipped: list[str]
    """One message per file that could not be used."""
    scale: ScaleEstimate = UNSCALED
    """How the cells were rescaled to the training images' magnification."""


def load_cells(
    data: str | Path,
    card: ModelCard,
    model: TransferModel | None = None,
    *,
    labelled: bool = True,
) -> Cells:
    """The labelled cells of the model's classes in ``data`` (class folders with PBC names),
    or with ``labelled`` False every image under ``data`` (labels -1).

    Unreadable images are skipped with a message naming the file, never fatal. Given the
    source ``model``, the cells are rescaled to the training images' magnification as the
    predictor rescales a sample of them (:class:`~leukoscope.data.preprocess.SampleScale`), so
    that the adapted model learns the cells as it will later be shown them; labelled cells
    are measured against their own classes, not the source model's calls.

    Raises
    ------
    LeukoscopeError
        No readable image (of the model's classes, when labelled).
    """
    skipped: list[str] = []
    if labelled:
        samples, _ = samples_from_folder(data, card.classes)
    else:
        samples = samples_from_paths([data], skipped)
    cells = (
        cells_from_samples(samples, card)
        if model is None
        else rescaled_cells(samples, card, model, labelled=labelled)
    )
    if not len(cells.pixels):
        wanted = f" of the classes {card.classes}" if labelled else ""
        raise LeukoscopeError(f"{data}: no readable images{wanted}")
    return dataclasses.replace(cells, skipped=skipped + cells.skipped)


def rescaled_cells(
    samples: Sequence[Sample], card: ModelCard, model: TransferModel, *, labelled: bool
) -> Cells:
    """:func:`cells_from_samples`, rescaled by the factor ``model`` estimates for the samples
    as one sample: measured against their labels with ``labelled`` (as :func:`adapt` does),
    else by the model's calls (as ``predict`` does)."""
    labels = [card.classes[s.label] for s in samples] if labelled else None
    scale = Predictor.from_model(model, card).estimate_scale([s.path for s in samples], labels)
    return cells_from_samples(samples, card, scale)


def lab_preprocessing(card: ModelCard, scale: ScaleEstimate) -> Preprocessing:
    """The card's preprocessing for a model adapted on labelled cells that measured ``scale``:
    the lab's magnification becomes its :attr:`~leukoscope.data.preprocess.SampleScale.
    lab_factor`, by which every later sample whose cells confirm it is rescaled. Unchanged
    when the model is not rescaled or fewer cells than a sample needs were measured (a factor
    from five cells is a guess)."""
    sample_scale = card.preprocessing.sample_scale
    if sample_scale is None or scale.measured is None or scale.cells < sample_scale.min_cells:
        return card.preprocessing
    lab = dataclasses.replace(sample_scale, lab_factor=round(scale.measured, 4))
    return dataclasses.replace(card.preprocessing, sample_scale=lab)


def cells_from_samples(
    samples: Sequence[Sample], card: ModelCard, scale: ScaleEstimate = UNSCALED
) -> Cells:
    """``samples`` decoded as the predictor sees them (rescaled by ``scale``); unreadable
    files are skipped, each with a message naming it (no cell at all: empty ``pixels``)."""
    dataset = pixels_dataset(samples, card.preprocessing, scale.factor)
    pixels, labels, paths, skipped = [], [], [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if "error" in item:
            skipped.append(item["error"])
            continue
        pixels.append(item["image"])
        labels.append(item["label"])
        paths.append(samples[index].path)
    size = card.preprocessing.input_size
    stacked = torch.stack(pixels) if pixels else torch.empty((0, size, size, 3), dtype=torch.uint8)
    return Cells(stacked, np.array(labels, dtype=int), paths, skipped, scale)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has normalisation statistics :func:`renormalise` can re-estimate."""
    return bool(_batchnorms(model))


def _require_batchnorm(model: nn.Module, card: ModelCard) -> None:
    if not has_batchnorm(model):
        raise LeukoscopeError(
            f"{card.arch} has no BatchNorm layers, so there are no normalisation statistics to "
            "re-estimate: adapt it with labelled cells"
        )


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in _batchnorms(model):
        module.eval()


def renormalise(
    model: TransferModel, card: ModelCard, pixels: torch.Tensor, batch_size: int = 64
) -> TransferModel:
    """A copy of ``model`` whose BatchNorm statistics are those of the cells ``pixels``
    (N, H, W, 3 uint8, as the predictor sees them, test-time views included); every weight is
    the source's, and ``model`` is left untouched. See the module docstring for why.

    Raises
    ------
    LeukoscopeError
        The model has no BatchNorm layer, or there are fewer than
        :data:`MIN_RENORMALISE_CELLS` cells.
    """
    from leukoscope.inference.pixel_model import PixelModel

    if len(pixels) < MIN_RENORMALISE_CELLS:
        raise LeukoscopeError(
            f"{len(pixels)} cells are too few to re-estimate the normalisation statistics "
            f"(at least {MIN_RENORMALISE_CELLS})"
        )
    _require_batchnorm(model, card)
    tuned = copy.deepcopy(model)
    pixel_model = PixelModel.from_card(tuned, card)
    norms = _batchnorms(tuned)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over all the batches
        norm.train()
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            pixel_model(pixels[start : start + batch_size])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return tuned.eval().requires_grad_(False)


def fit_renormalised_reference(
    model: TransferModel, card: ModelCard, train: Cells, val: Cells
) -> Abstainer:
    """The abstention rule of ``model`` renormalised on its own ``train`` cells, for the models
    :func:`adapt` renormalises on another lab's cells.

    Renormalising moves every feature, so the source's rule no longer fits a renormalised
    model: renormalised on PBC's own 1,227 test cells, the 5-class EfficientNet had 79% of them
    flagged by it, against the 5% it was fitted for. A model renormalised on one sample of
    cells describes them much as it describes any other sample renormalised the same way,
    though. So the rule is refitted here as
    :func:`~leukoscope.evaluation.calibrate.calibrate` fits the source's, on the model
    renormalised on ``train`` (labelled cells of the training data): class means and
    covariance from ``train``, percentiles and the threshold (at the card's target coverage)
    from ``val``; temperature and confidence score are the card's. With it, the same test
    cells were 4.9% flagged (99.4% of the others right), and another lab's cells still mostly
    flagged: 70% of cellavision's and all but one of tecom's 300
    (``python benchmarks/external.py --renormalise``), so the shift warning still fires.

    Raises
    ------
    LeukoscopeError
        The card is not calibrated, or :func:`renormalise` refuses the model or the cells.
    """
    if card.calibration is None or card.abstention is None:
        raise LeukoscopeError("the model is not calibrated: calibrate it first")
    renormalised = renormalise(model, card, train.pixels)
    train_features = outputs(renormalised, card, train.pixels)[1]
    val_logits, val_features = outputs(renormalised, card, val.pixels)
    return Abstainer.fit(
        train_features,
        train.labels,
        val_logits,
        val_features,
        temperature=card.calibration.temperature,
        confidence=card.abstention.confidence,
        target_coverage=card.abstention.target_coverage,
    )


def fine_tune(
    model: TransferModel,
    card: ModelCard,
    pixels: torch.Tensor,
    labels: np.ndarray,
    options: AdaptOptions,
) -> TransferModel:
    """A fine-tuned copy of ``model`` on the cells ``pixels`` (N, H, W, 3) with class indices
    ``labels`` (see the module docstring for the recipe); ``model`` is left untouched."""
    tuned = copy.deepcopy(model)
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    present = np.unique(labels)
    column = torch.as_tensor(present)
    targets = torch.as_tensor(np.searchsorted(present, labels))
    counts = np.bincount(targets.numpy())
    weights = torch.as_tensor(1.0 / counts[targets.numpy()])
    chain = ModelChain(tuned)
    cut = chain.cut(options.trainable_stages)
    frozen, trainable = chain.part(0, cut), chain.part(cut, len(chain.layers))
    for parameter in tuned.parameters():
        parameter.requires_grad_(False)
    blocks = chain.trainable_blocks(options.trainable_stages)
    for block in blocks:
        block.requires_grad_(True)
    phase = Phase("adapt", 1, options.lr, options.trainable_stages, 0.5, warmup_epochs=0.1)
    optimiser = torch.optim.AdamW(param_groups(blocks, phase, weight_decay=0.01))
    scheduler = build_scheduler(optimiser, phase, options.steps)
    transform = create_transform(card.preprocessing, options.augmentation)
    images = pixels.permute(0, 3, 1, 2)
    tuned.train()
    _freeze_batchnorm(tuned)
    for _ in range(options.steps):
        batch = torch.multinomial(weights, options.batch_size, True, generator=generator)
        x = torch.stack([transform(images[i]) for i in batch.tolist()])
        with torch.no_grad():
            x = frozen(x)
        logits = trainable(x)[:, column]
        loss = F.cross_entropy(logits, targets[batch], label_smoothing=0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
    _restore_absent_rows(tuned, model, present)
    return tuned.eval().requires_grad_(False)


def _restore_absent_rows(tuned: TransferModel, source: TransferModel, present: np.ndarray) -> None:
    """Give the output layer's rows of the classes without cells their source weights back:
    the data says nothing about them, and weight decay or the shared layers' drift must not
    erase what the source model knew."""
    out = cast(nn.Linear, tuned.head.classifier[-1])
    reference = cast(nn.Linear, source.head.classifier[-1])
    absent = torch.as_tensor(np.setdiff1d(np.arange(out.out_features), present))
    with torch.no_grad():
        out.weight[absent] = reference.weight[absent]
        out.bias[absent] = reference.bias[absent]


def outputs(
    model: TransferModel, card: ModelCard, pixels: torch.Tensor, batch_size: int = 64
) -> tuple[np.ndarray, ...]:
    """Raw logits and pooled features of the cells, as the predictor computes them, in batches
    of ``batch_size`` cells: 400 cells at once (1,600 images with the EfficientNet's four
    views) took more than the 24 GiB of the development machine."""
    predictor = Predictor.from_model(model, card.replace(calibration=None, abstention=None))
    parts = [
        predictor.run(pixels[start : start + batch_size].numpy())
        for start in range(0, len(pixels), batch_size)
    ]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


UNLABELLED_RECALIBRATION = "the source's (unlabelled cells: nothing to refit them on)"
"""The card's ``recalibration`` of a model renormalised on unlabelled cells, when the source
has no abstention rule for renormalised models (no ``renormalised_abstention``)."""
RENORMALISED_RECALIBRATION = (
    "the source's temperature, and its abstention rule for renormalised models (fitted on its "
    "training data with the model renormalised on its own cells)"
)
"""The card's ``recalibration`` of a model renormalised on unlabelled cells, when the source
has one (see :func:`fit_renormalised_reference`)."""


@dataclass(frozen=True)
class Recalibration:
    """The adapted model's calibration and abstention rule, how they were fitted, and the
    out-of-fold predictions' accuracy, overall and per class (None and empty without folds)."""

    calibration: Calibration
    abstainer: Abstainer | None
    method: str
    out_of_fold_accuracy: float | None = None
    out_of_fold_recall: dict[str, float] = dataclasses.field(default_factory=dict)


def recalibrate(
    model: TransferModel,
    source_model: TransferModel,
    card: ModelCard,
    cells: Cells,
    options: AdaptOptions,
    abstainer: Abstainer | None,
    on_progress: Callable[[str], None] | None = None,
) -> Recalibration:
    """Refit the temperature and the abstention threshold for the adapted ``model``.

    With every class holding at least :data:`MIN_FOLD_CELLS` cells per fold part, the cells
    are split into stratified folds; the adaptation is repeated from ``source_model`` on each
    fold's complement and the held-out cells are predicted, so every cell gets a prediction
    from a model that never saw it. The temperature and the threshold (at the source's target
    coverage) are fitted on these out-of-fold predictions; the abstention's class means and
    covariance on the adapted model's features of all cells. Their accuracy, overall and per
    class, tells the lab what to expect of the adapted model before it classifies anything;
    each fold's model learned from fewer cells, so it errs low (on tecom at 10 cells per class
    their mean recall read 75-82.5% where the lab's other cells gave 86-90%, three runs of
    ``benchmarks/adapt.py --out-of-fold``).

    With fewer cells, folds would leave classes out of training, so the source temperature is
    kept (scaling confidence up after adaptation on a handful of cells would be a guess) and
    the abstention reference is fitted on the adapted model's own cells: in-sample, so those
    cells look more confident and familiar than new ones, which makes new cells flagged more
    often (erring towards review). The card's ``calibration.split`` says which was done.
    """
    source_calibration = card.calibration
    counts = np.bincount(cells.labels)
    smallest = counts[counts > 0].min()
    folds = min(options.folds, int(smallest) // MIN_FOLD_CELLS)
    logits_all, features_all = outputs(model, card, cells.pixels)
    if folds >= 2:
        split = StratifiedKFold(folds, shuffle=True, random_state=options.seed)
        ref_logits = np.zeros_like(logits_all)
        ref_features = np.zeros_like(features_all)
        for k, (train, held_out) in enumerate(split.split(cells.labels, cells.labels)):
            if on_progress is not None:
                on_progress(f"fold {k + 1}/{folds}")
            fold_model = fine_tune(
                source_model, card, cells.pixels[train], cells.labels[train], options
            )
            ref_logits[held_out], ref_features[held_out] = outputs(
                fold_model, card, cells.pixels[held_out]
            )
        temperature = fit_temperature(ref_logits, cells.labels)
        method = f"{folds}-fold out-of-fold predictions of the adaptation cells"
        right = ref_logits.argmax(axis=1) == cells.labels
        accuracy: float | None = round(float(right.mean()), 4)
        recall = {
            card.classes[c]: round(float(right[cells.labels == c].mean()), 4)
            for c in np.unique(cells.labels)
        }
    else:
        ref_logits, ref_features = logits_all, features_all
        temperature = source_calibration.temperature if source_calibration else 1.0
        why = "no folds asked for" if options.folds < 2 else "too few cells of a class for folds"
        method = f"source temperature; abstention reference in-sample ({why})"
        accuracy, recall = None, {}
    probabilities = softmax(ref_logits / temperature, axis=1)
    before = softmax(ref_logits, axis=1)
    calibration = Calibration(
        temperature=float(temperature),
        ece_before=round(expected_calibration_error(before, cells.labels), 4),
        ece_after=round(expected_calibration_error(probabilities, cells.labels), 4),
        n=len(cells.labels),
        split=method,
    )
    refitted = None
    if abstainer is not None and card.abstention is not None:
        refitted = Abstainer.fit(
            features_all,
            cells.labels,
            ref_logits,
            ref_features,
            temperature=float(temperature),
            confidence=card.abstention.confidence,
            target_coverage=card.abstention.target_coverage,
        )
    return Recalibration(calibration, refitted, method, accuracy, recall)


def renormalised_for_sample(
    predictor: Predictor, paths: Sequence[str | Path], scale: ScaleEstimate
) -> Predictor:
    """``predictor``'s model renormalised on one sample's cells, with the abstention rule its
    source carries for renormalised models, in ``predictor``'s backend (an export runtime
    runs its fp32 export, written to a temporary folder removed with the predictor).

    This is ``adapt --unlabelled`` on the sample itself, for a sample that looks unlike the
    training data (:mod:`leukoscope.inference.shift`): ``predict`` and ``differential`` then
    classify it again with this predictor. See the module docstring for what it gains on
    another lab's images and costs on the training lab's.

    Parameters
    ----------
    predictor
        The loaded model (its ``renormalisable`` must hold).
    paths
        The sample's readable images; at most :data:`SAMPLE_CELLS` of them, spread evenly,
        are used.
    scale
        How the sample was rescaled when it was classified; its cells are rescaled the same.

    Returns
    -------
    Predictor
        Its card's ``adaptation`` names the source and the cells renormalised on.

    Raises
    ------
    LeukoscopeError
        The model cannot be renormalised, or fewer than :data:`MIN_RENORMALISE_CELLS` of
        the cells could be read.
    """
    chosen = list(spread([Path(p) for p in paths], SAMPLE_CELLS))
    cells = cells_from_samples([Sample(p) for p in chosen], predictor.card, scale)
    return _renormalised(
        predictor,
        cells.pixels,
        cells.paths,
        skipped=len(cells.skipped),
        magnification=scale.factor,
        command="renormalised on the sample it classifies (leukoscope predict / differential)",
    )


def renormalised_for_fields(
    predictor: Predictor, fields: Sequence[str | Path], cuts: Mapping[str, Cuts] | None = None
) -> Predictor:
    """:func:`renormalised_for_sample` for a sample of field images: ``predictor``'s model
    renormalised on up to :data:`SAMPLE_CELLS` of their white cells, cut out as ``predict
    --fields`` cuts them (:func:`~leukoscope.cells.crops.field_cells`, already at the training
    images' magnification) from fields spread evenly through ``fields``; at ``cuts`` (by
    path), where the fields were located before, without locating them again.

    Raises
    ------
    LeukoscopeError
        As :func:`renormalised_for_sample`; a field that can no longer be read is passed over.
    """
    from leukoscope.cells.crops import field_cells

    config = predictor.card.preprocessing
    pixels: list[np.ndarray] = []
    used: list[Path] = []
    skipped = 0
    for field in spread([Path(f) for f in fields], SAMPLE_CELLS):
        try:
            rgb = np.asarray(decode_rgb(field))
        except ImageDecodeError:
            skipped += 1
            continue
        known = None if cuts is None else cuts.get(str(field))
        cut = field_cells(rgb, known)[: SAMPLE_CELLS - len(pixels)]
        pixels += [to_noted_pixels(Image.fromarray(cell.rgb), config)[0] for cell in cut]
        used += [field] if cut else []
        if len(pixels) == SAMPLE_CELLS:
            break
    return _renormalised(
        predictor,
        _stacked(pixels, config.input_size),
        used,
        skipped=skipped,
        magnification=1.0,
        command="renormalised on the field images it classifies (leukoscope predict --fields)",
    )


def _stacked(pixels: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Cells' uint8 pixels as one (N, size, size, 3) tensor, N = 0 without any (which
    :func:`renormalise` refuses with its reason)."""
    if not pixels:
        return torch.empty((0, size, size, 3), dtype=torch.uint8)
    return torch.from_numpy(np.stack(pixels))


def renormalised_for_images(
    predictor: Predictor,
    images: Sequence[Image.Image],
    factors: Sequence[float],
    files: Sequence[tuple[str, str]],
    *,
    data: str,
    command: str,
) -> Predictor:
    """:func:`renormalised_for_sample` for images already decoded (the web app's stored cells):
    ``predictor``'s model renormalised on them. The caller picks them (up to
    :data:`SAMPLE_CELLS`, spread through the sample) before decoding, so that a large sample is
    never decoded whole.

    Parameters
    ----------
    predictor
        The loaded model (its ``renormalisable`` must hold).
    images
        The cells to renormalise on.
    factors
        By how much each image is rescaled to the training images' magnification: the
        sample's :class:`~leukoscope.data.preprocess.ScaleEstimate` factor for a cell image, 1
        for a cell cut from a field (already at that magnification).
    files
        Each image's name and sha256, recorded in the card's adaptation.
    data, command
        Where the images come from and what renormalised them, for the card.

    Returns
    -------
    Predictor
        As :func:`renormalised_for_sample`; the card's magnification is the largest factor.
    """
    if not len(images) == len(factors) == len(files):
        raise ValueError(f"{len(images)} images, {len(factors)} factors and {len(files)} files")
    config = predictor.card.preprocessing
    pixels = [
        to_noted_pixels(image, config, factor)[0]
        for image, factor in zip(images, factors, strict=True)
    ]
    return _renormalised_on(
        predictor,
        _stacked(pixels, config.input_size),
        dict(files),
        data=data,
        skipped=0,
        magnification=max(factors, default=1.0),
        command=command,
    )


def _renormalised(
    predictor: Predictor,
    pixels: torch.Tensor,
    files: Sequence[Path],
    *,
    skipped: int,
    magnification: float,
    command: str,
) -> Predictor:
    """:func:`_renormalised_on` for cells from ``files``."""
    return _renormalised_on(
        predictor,
        pixels,
        {str(p): sha256_file(p) for p in dict.fromkeys(files)},
        data=os.path.commonpath([p.resolve() for p in files]) if files else "",
        skipped=skipped,
        magnification=magnification,
        command=command,
    )


def _renormalised_on(
    predictor: Predictor,
    pixels: torch.Tensor,
    files: dict[str, str],
    *,
    data: str,
    skipped: int,
    magnification: float,
    command: str,
) -> Predictor:
    """``predictor``'s model renormalised on ``pixels`` (cells as the predictor sees them),
    from ``files`` (name -> sha256) in ``data``: the predictor of
    :func:`renormalised_for_sample`, :func:`renormalised_for_fields` and
    :func:`renormalised_for_images`."""
    card, weights = predictor.card, predictor.weights
    if not predictor.renormalisable or weights is None:
        raise LeukoscopeError(
            f"{predictor.source}: cannot be renormalised (it needs its PyTorch weights and an "
            "abstention rule for renormalised models, which `calibrate` fits for EfficientNets)"
        )
    tuned = renormalise(predictor.model, card, pixels)
    adaptation = Adaptation(
        source=card.release.name if card.release else weights.parent.name,
        source_sha256=card.sha256,
        data=data,
        cells={},
        files=files,
        skipped=skipped,
        steps=0,
        batch_size=0,
        trainable_stages=0,
        seed=0,
        recalibration=RENORMALISED_RECALIBRATION,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        magnification=round(magnification, 4),
        renormalised=len(pixels),
    )
    abstainer = Abstainer.load(weights.parent, card, renormalised=True)
    renormalised_card = card.replace(
        renormalised_abstention=None,
        test_metrics=None,
        release=None,
        adaptation=adaptation,
        fallback=None,  # the fallback was not renormalised on these cells
    )
    if predictor.backend == "torch":
        in_memory = renormalised_card.replace(
            abstention=card.renormalised_abstention, sha256=weights_sha256(tuned)
        )
        return Predictor.from_model(tuned, in_memory, abstainer)
    # Written as `adapt` writes a model, to run in the source's engine (the renormalised
    # tecom sample took 56 s in PyTorch); the folder lives as long as the predictor.
    folder = Path(tempfile.mkdtemp(prefix="leukoscope-renormalised-"))
    written = _write_staged(
        folder / "model", tuned, renormalised_card.replace(abstention=None), abstainer, card
    )
    loaded = Predictor.load(written, backend=predictor.backend)
    weakref.finalize(loaded, shutil.rmtree, folder, ignore_errors=True)
    return loaded


@dataclass(frozen=True)
class AdaptResult:
    """The adapted model's folder and card, and the files that were skipped."""

    path: Path
    card: ModelCard
    adaptation: Adaptation
    skipped: list[str]

    @property
    def summary(self) -> str:
        """The cells per class and how the calibration was refitted, in words."""
        temperature = self.card.calibration.temperature if self.card.calibration else 1.0
        if not self.adaptation.cells:
            return (
                f"{self.adaptation.renormalised} unlabelled cells (normalisation statistics "
                f"re-estimated); temperature {temperature:.3f} and abstention rule: "
                f"{self.adaptation.recalibration}"
            )
        cells = ", ".join(f"{label} {n}" for label, n in self.adaptation.cells.items())
        summary = (
            f"{sum(self.adaptation.cells.values())} cells ({cells}); temperature "
            f"{temperature:.3f} from {self.adaptation.recalibration}"
        )
        accuracy = self.adaptation.out_of_fold_accuracy
        if accuracy is None:
            return f"{summary}. No out-of-fold estimate of its accuracy"
        recall = self.adaptation.out_of_fold_recall
        per_class = ", ".join(f"{c} {r:.0%}" for c, r in recall.items())
        return (
            f"{summary}. Out of fold, each cell called by a model adapted without it: "
            f"{accuracy:.0%} of these cells right; per class {per_class} (balanced accuracy "
            f"{np.mean(list(recall.values())):.0%})"
        )


def adapt(
    source: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    options: AdaptOptions = AdaptOptions(),
    on_progress: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Adapt the model at ``source`` to the cells in ``data``; write it to ``out``.

    Labelled cells (class folders) fine-tune it (:func:`fine_tune`) and refit its calibration
    (:func:`recalibrate`); with ``options.labelled`` False, every image under ``data`` is used
    unlabelled to re-estimate its normalisation statistics (:func:`renormalise`), and the
    source's calibration and abstention rule are kept, since there is nothing to refit them on.

    The folder is assembled in a hidden staging folder beside ``out`` and renamed into place
    when complete (an existing ``out`` is replaced), like a release. Its card keeps the
    source's architecture, classes and preprocessing, drops the source's test metrics and
    release (they describe another model), and gains an ``adaptation`` section naming the
    source by sha256 and every cell file by sha256. The folder holds the fp32 ONNX export too.

    Raises
    ------
    LeukoscopeError
        The source cannot be loaded, ``data`` holds no readable image (of its classes, when
        labelled), or unlabelled cells are too few or the model has no normalisation statistics.
    """
    source_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    model, card = load_model(source)
    abstainer = Abstainer.load(source_dir, card) if card.abstention else None
    if not options.labelled:
        _require_batchnorm(model, card)  # before decoding any cell
    cells = load_cells(data, card, model, labelled=options.labelled)
    if on_progress is not None and cells.scale.factor != 1.0:
        on_progress(cells.scale.message)
    calibration: Calibration | None
    if options.labelled:
        if on_progress is not None:
            on_progress(f"fine-tuning on {len(cells.labels)} cells")
        adapted = fine_tune(model, card, cells.pixels, cells.labels, options)
        recal = recalibrate(adapted, model, card, cells, options, abstainer, on_progress)
        calibration, method, abstainer = recal.calibration, recal.method, recal.abstainer
        per_class = np.bincount(cells.labels, minlength=len(card.classes))
        out_of_fold = recal.out_of_fold_accuracy, recal.out_of_fold_recall
    else:
        if on_progress is not None:
            on_progress(f"re-estimating the normalisation statistics on {len(cells.labels)} cells")
        adapted = renormalise(model, card, cells.pixels)
        calibration, method = card.calibration, UNLABELLED_RECALIBRATION
        if card.renormalised_abstention is not None:
            abstainer = Abstainer.load(source_dir, card, renormalised=True)
            method = RENORMALISED_RECALIBRATION
        per_class = np.zeros(len(card.classes), dtype=int)
        out_of_fold = None, {}
    recipe = (
        f" --steps {options.steps} --trainable-stages {options.trainable_stages} --folds "
        f"{options.folds} --seed {options.seed}"
        if options.labelled
        else " --unlabelled"
    )
    adaptation = Adaptation(
        source=card.release.name if card.release else source_dir.name,
        source_sha256=card.sha256,
        data=str(data),
        cells={c: int(n) for c, n in zip(card.classes, per_class, strict=True) if n},
        files={_relative(p, Path(data)): sha256_file(p) for p in cells.paths},
        skipped=len(cells.skipped),
        steps=options.steps if options.labelled else 0,
        batch_size=options.batch_size,
        trainable_stages=options.trainable_stages if options.labelled else 0,
        seed=options.seed,
        recalibration=method,
        magnification=round(cells.scale.factor, 4),
        renormalised=0 if options.labelled else len(cells.labels),
        out_of_fold_accuracy=out_of_fold[0],
        out_of_fold_recall=out_of_fold[1],
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=f"leukoscope adapt --model {source} --data {data} --out {out}{recipe}",
    )
    new_card = card.replace(
        preprocessing=lab_preprocessing(card, cells.scale)
        if options.labelled
        else card.preprocessing,
        calibration=calibration,
        abstention=None,
        renormalised_abstention=None,
        test_metrics=None,
        release=None,
        adaptation=adaptation,
        fallback=None,  # the fallback was not adapted to this lab
    )
    path = _write_staged(Path(out), adapted, new_card, abstainer, card)
    return AdaptResult(path, load_model(path)[1], adaptation, cells.skipped)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _write_staged(
    out: Path,
    model: TransferModel,
    card: ModelCard,
    abstainer: Abstainer | None,
    source_card: ModelCard,
) -> Path:
    """Save the model (its abstention statistics, and its fp32 ONNX export, so that the
    predictor runs it in an export runtime from the first ``predict``) in a staging folder beside
    ``out``, then move it into place."""
    from leukoscope.inference.export import export_fp32

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}-*"):  # staging of a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        if abstainer is not None and source_card.abstention is not None:
            abstention = abstainer.save(staging, source_card.abstention.target_coverage)
            card = card.replace(abstention=abstention)
        save_model(staging, model, card)
        export_fp32(staging, staging / ONNX_NAME)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return out
