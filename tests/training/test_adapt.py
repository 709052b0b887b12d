"""Few-shot adaptation of the tiny synthetic-cell model to a 'lab' whose cells look different."""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.data.preprocess import UNSCALED, Augmentation, SampleScale, ScaleEstimate
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import sha256_file
from leukoscope.inference.abstention import RENORMALISED_STATS_NAME, STATS_NAME
from leukoscope.inference.export import export_fp32
from leukoscope.inference.pixel_model import PixelModel
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import ONNX_NAME, engines_for
from leukoscope.inference.shift import MIN_RENORMALISE_CELLS
from leukoscope.models import load_model
from leukoscope.training.adapt import (
    RENORMALISED_RECALIBRATION,
    UNLABELLED_RECALIBRATION,
    AdaptOptions,
    adapt,
    lab_preprocessing,
    load_cells,
    outputs,
    renormalise,
    renormalised_for_sample,
)
from tests.cells.drawing import drawn_cell
from tests.conftest import cell_image
from tests.inference.tiny import (
    HUES,
    Tiny,
    build_batchnorm,
    save_batchnorm_model,
    tiny_or_skip,
)

NEW_LAB = ("eosinophil", "lymphocyte", "neutrophil")
"""The classes the new lab labelled: no basophils."""
OPTIONS = AdaptOptions(
    steps=25, batch_size=16, lr=3e-3, trainable_stages=2, folds=3, augmentation=Augmentation()
)
"""The synthetic classes differ only in colour, which the lab-robust augmentation varies on
purpose: here each cell is only turned and mirrored."""


def new_lab_cells(root: Path, per_class: int = 6) -> Path:
    """Cells of :data:`NEW_LAB` whose nucleus colours are rotated (R, G, B) -> (B, R, G): the
    source model's colour cues point to the wrong classes; and one corrupt file."""
    for label in NEW_LAB:
        r, g, b = HUES[label]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cell_image(5000 + 37 * i, size=96, hue=(b, r, g)).save(folder / f"{i}.png")
    (root / "neutrophil" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny_or_skip(tmp_path_factory)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_lab_cells(tmp_path_factory.mktemp("new-lab"))


@pytest.fixture(scope="module")
def adapted(tiny: Tiny, lab: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(2)
    return adapt(tiny.model_dir, lab, tmp_path_factory.mktemp("adapted") / "m", options=OPTIONS)


def _accuracy(model_dir: Path, lab: Path) -> float:
    model, card = load_model(model_dir)
    cells = load_cells(lab, card)
    logits, _ = outputs(model, card, cells.pixels)
    return float((logits.argmax(1) == cells.labels).mean())


def test_accuracy_on_the_new_lab_rises(tiny: Tiny, lab: Path, adapted) -> None:
    before, after = _accuracy(tiny.model_dir, lab), _accuracy(adapted.path, lab)
    assert before < 0.7
    assert after >= 0.9 and after > before + 0.2


def test_adapted_model_loads_in_the_predictor(adapted, lab: Path) -> None:
    predictor = Predictor.load(adapted.path)
    assert predictor.abstainer is not None  # the source was calibrated: so is the copy
    assert predictor.backend == "onnx"  # its export, made from these very weights
    paths = sorted((lab / "lymphocyte").glob("*.png"))
    predictions = predictor.predict_paths(paths, workers=0)
    assert all(p.error is None for p in predictions)
    assert sum(p.label == "lymphocyte" for p in predictions) >= len(paths) - 1


def test_card_names_source_data_and_every_file(tiny: Tiny, lab: Path, adapted) -> None:
    adaptation = adapted.card.adaptation
    assert adaptation.source_sha256 == sha256_file(tiny.model_dir / "model.safetensors")
    assert adaptation.data == str(lab)
    assert adaptation.cells == dict.fromkeys(NEW_LAB, 6)
    assert adaptation.files["lymphocyte/0.png"] == sha256_file(lab / "lymphocyte" / "0.png")
    assert len(adaptation.files) == 18 and adaptation.skipped == 1
    assert adaptation.magnification == 1.0  # the tiny model's card has no training cell size
    assert "3-fold out-of-fold" in adapted.card.calibration.split
    recall = adaptation.out_of_fold_recall
    assert set(recall) == set(NEW_LAB) and all(0 <= r <= 1 for r in recall.values())
    weighted = sum(recall[c] * n for c, n in adaptation.cells.items()) / 18
    assert adaptation.out_of_fold_accuracy == pytest.approx(weighted, abs=1e-3)
    assert f"{adaptation.out_of_fold_accuracy:.0%} of these cells right" in adapted.summary
    assert f"lymphocyte {recall['lymphocyte']:.0%}" in adapted.summary
    assert adaptation.command.endswith("--steps 25 --trainable-stages 2 --folds 3 --seed 0")
    assert adapted.card.release is None and adapted.card.test_metrics is None


def test_without_folds_the_card_says_why_and_estimates_nothing(
    tiny: Tiny, lab: Path, tmp_path: Path
) -> None:
    options = dataclasses.replace(OPTIONS, folds=0)
    result = adapt(tiny.model_dir, lab, tmp_path / "m", options=options)
    assert result.adaptation.recalibration.endswith("(no folds asked for)")
    assert result.adaptation.out_of_fold_accuracy is None
    assert result.summary.endswith("No out-of-fold estimate of its accuracy")


def test_corrupt_image_is_skipped_with_its_name(adapted) -> None:
    assert len(adapted.skipped) == 1 and "broken.png" in adapted.skipped[0]


def test_classes_without_cells_keep_their_head_rows(tiny: Tiny, adapted) -> None:
    source, card = load_model(tiny.model_dir)
    tuned, _ = load_model(adapted.path)
    basophil = card.classes.index("basophil")
    rows = [m.head.classifier[-1].weight.detach().numpy() for m in (source, tuned)]
    np.testing.assert_array_equal(rows[0][basophil], rows[1][basophil])
    others = [card.classes.index(c) for c in NEW_LAB]
    assert not np.allclose(rows[0][others], rows[1][others])


def test_cells_are_rescaled_to_the_source_magnification_when_it_has_one(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, card = load_model(tiny.model_dir)
    lab = tmp_path / "lab"
    for i in range(9):  # cells half the side: 1.67 times the card's 0.3
        folder = lab / NEW_LAB[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn_cell((120, 120), (60, 60), 60, seed=i)).save(folder / f"{i}.png")
    assert load_cells(lab, card, model).scale.factor == 1.0  # no size in the card: as they are
    scaled = card.replace(
        preprocessing=dataclasses.replace(card.preprocessing, sample_scale=SampleScale(0.3, 100))
    )
    cells = load_cells(lab, scaled, model)
    assert cells.scale.factor > 1.5
    unscaled = load_cells(lab, scaled)
    assert not torch.equal(cells.pixels, unscaled.pixels)
    # Labelled, each cell is measured against its own class's training size, whatever the
    # source model calls it (here: every cell the class that is small in training).
    by_class = SampleScale(0.3, 100, {NEW_LAB[0]: 0.5, NEW_LAB[1]: 0.5, NEW_LAB[2]: 0.3})
    classed = card.replace(
        preprocessing=dataclasses.replace(card.preprocessing, sample_scale=by_class)
    )
    monkeypatch.setattr(
        Predictor, "_classify_rescaled", lambda self, images, factor: [NEW_LAB[2]] * len(images)
    )
    assert load_cells(lab, classed, model, labelled=False).scale.factor > 1.5  # by the calls
    measured = load_cells(lab, classed, model).scale
    assert measured.factor == 1.0 and measured.measured is not None
    assert 0.9 < measured.measured < 1.1


def test_the_labelled_cells_magnification_becomes_the_lab_factor(tiny: Tiny) -> None:
    _, card = load_model(tiny.model_dir)
    scaled = card.replace(
        preprocessing=dataclasses.replace(card.preprocessing, sample_scale=SampleScale(0.3, 100))
    )
    measured = ScaleEstimate(factor=1.46, measured=1.46, cells=40)
    lab = scaled.replace(preprocessing=lab_preprocessing(scaled, measured))  # a card holds it
    assert lab.preprocessing.sample_scale is not None
    assert lab.preprocessing.sample_scale.lab_factor == 1.46
    within = ScaleEstimate(factor=1.0, measured=1.05, cells=40)  # measured, not applied
    assert lab_preprocessing(scaled, within).sample_scale == SampleScale(0.3, 100, lab_factor=1.05)
    too_few = ScaleEstimate(factor=1.0, measured=1.5, cells=5)
    assert lab_preprocessing(scaled, too_few) == scaled.preprocessing
    assert lab_preprocessing(card, measured) == card.preprocessing  # a model not rescaled


@pytest.fixture(scope="module")
def batchnorm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_batchnorm_model(tmp_path_factory.mktemp("bn") / "model")


def unlabelled_cells(root: Path, n: int) -> Path:
    """``n`` pale-yellow 'rapid stain' cells in one flat folder, and one corrupt file."""
    root.mkdir(parents=True)
    for i in range(n):
        cell_image(7000 + i, size=48, hue=(180, 150, 60)).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def test_renormalised_statistics_are_the_cells(batchnorm_model: Path, tmp_path: Path) -> None:
    model, card = load_model(batchnorm_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cells = load_cells(unlabelled_cells(tmp_path / "lab", 40), card, labelled=False)
    assert len(cells.skipped) == 1 and "broken.png" in cells.skipped[0]
    tuned = renormalise(model, card, cells.pixels)

    # The first BatchNorm's statistics are those of the stem's output on these cells, computed
    # here directly (one batch: momentum None averages the batches).
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        x = stem(PixelModel.from_card(model, card).normalise(cells.pixels))
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    norm = next(m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1 and not norm.training  # as it was, ready to predict

    source, after = model.state_dict(), tuned.state_dict()
    assert all(torch.equal(source[k], v) for k, v in before.items())  # the source is untouched
    changed = {k for k, v in before.items() if not torch.equal(after[k], v)}
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(statistics) for k in changed)  # only statistics moved


def test_renormalise_refuses_too_few_cells_and_models_without_batchnorm(
    batchnorm_model: Path, tiny: Tiny
) -> None:
    model, card = load_model(batchnorm_model)
    few = torch.zeros((MIN_RENORMALISE_CELLS - 1, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(LeukoscopeError, match="too few"):
        renormalise(model, card, few)
    squeezenet, card = load_model(tiny.model_dir)
    pixels = torch.zeros((MIN_RENORMALISE_CELLS, 64, 64, 3), dtype=torch.uint8)
    with pytest.raises(LeukoscopeError, match="no BatchNorm"):
        renormalise(squeezenet, card, pixels)


def test_unlabelled_adaptation_writes_a_renormalised_model(
    batchnorm_model: Path, tmp_path: Path
) -> None:
    lab = unlabelled_cells(tmp_path / "lab", 36)
    options = AdaptOptions(labelled=False)
    result = adapt(batchnorm_model.parent, lab, tmp_path / "renormalised", options=options)
    adaptation = result.card.adaptation
    assert adaptation.renormalised == 36 and adaptation.cells == {} and adaptation.steps == 0
    assert adaptation.out_of_fold_accuracy is None and adaptation.out_of_fold_recall == {}
    assert len(adaptation.files) == 36 and adaptation.skipped == 1
    assert adaptation.command.endswith(" --unlabelled") and "--steps" not in adaptation.command
    assert "36 unlabelled cells" in result.summary
    assert adaptation.recalibration == UNLABELLED_RECALIBRATION  # no rule for renormalised models
    source, _ = load_model(batchnorm_model)
    tuned, _ = load_model(result.path)
    weights = [k for k in source.state_dict() if k.endswith("weight")]
    assert all(torch.equal(source.state_dict()[k], tuned.state_dict()[k]) for k in weights)
    predictor = Predictor.load(result.path)
    assert predictor.backend == engines_for("auto", result.card.arch)[0]  # its export
    predictions = predictor.predict_paths(sorted(lab.glob("*.png")), workers=0)
    assert sum(p.error is not None for p in predictions) == 1  # broken.png, named


def test_unlabelled_adaptation_uses_the_sources_rule_for_renormalised_models(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir
    _, card = load_model(source)
    assert card.renormalised_abstention is not None
    lab = unlabelled_cells(tmp_path / "lab", 36)
    result = adapt(source, lab, tmp_path / "renormalised", options=AdaptOptions(labelled=False))
    assert result.card.adaptation.recalibration == RENORMALISED_RECALIBRATION
    assert result.card.abstention == card.renormalised_abstention
    assert result.card.renormalised_abstention is None  # it describes the source, not this one
    written = (result.path / STATS_NAME).read_bytes()
    assert written == (source / RENORMALISED_STATS_NAME).read_bytes()
    predictor = Predictor.load(result.path)
    assert predictor.abstainer is not None
    assert predictor.abstainer.threshold == card.renormalised_abstention.threshold
    flagged = [
        dataclasses.replace(p, uncertain=True)
        for p in predictor.predict_paths(sorted(lab.glob("*.png"))[:10], workers=0)
    ]
    assert "already adapted without labels" in predictor.check_shift(flagged).message
    source_check = Predictor.load(source).check_shift(flagged)
    assert "adapt --unlabelled` on these images" in source_check.message


def test_a_sample_renormalised_for_classifying_is_the_sample_adapted_without_labels(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny: Tiny
) -> None:
    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir
    lab = unlabelled_cells(tmp_path / "lab", 36)
    paths = sorted(lab.glob("*.png"))  # broken.png among them
    predictor = Predictor.load(source, backend="torch")
    assert predictor.renormalisable
    mixed = [os.path.relpath(paths[0]), *paths[1:]]  # a relative path among absolute ones
    renormalised = renormalised_for_sample(predictor, mixed, UNSCALED)
    written = adapt(source, lab, tmp_path / "written", options=AdaptOptions(labelled=False))
    in_memory, on_disk = renormalised.model.state_dict(), load_model(written.path)[0].state_dict()
    assert all(torch.equal(in_memory[k], on_disk[k]) for k in on_disk)
    card = renormalised.card
    assert card.adaptation.renormalised == 36 and card.adaptation.skipped == 1
    assert card.adaptation.data == str(lab.resolve())
    assert card.abstention == written.card.abstention and card.renormalised_abstention is None
    assert renormalised.abstainer.threshold == written.card.abstention.threshold
    flagged = [
        dataclasses.replace(p, uncertain=True)
        for p in renormalised.predict_paths(paths[:10], workers=0)
    ]
    assert "already adapted without labels" in renormalised.check_shift(flagged).message

    # In an export runtime it runs its own export, computing what the PyTorch one does, from
    # a temporary folder that goes with it. (ONNX Runtime: with OpenVINO loaded in this test
    # process, a later test's training, whose loader forks workers, crashed in about half of
    # the runs; `predict`, `differential` and `evaluate` fork nothing after it.)
    exported = Path(shutil.copytree(source, tmp_path / "exported"))
    export_fp32(exported, exported / ONNX_NAME)
    in_engine = renormalised_for_sample(Predictor.load(exported, backend="onnx"), paths, UNSCALED)
    assert in_engine.backend == "onnx"
    assert in_engine.card.adaptation.renormalised == 36 and in_engine.abstainer is not None
    pixels = load_cells(lab, card, labelled=False).pixels.numpy()[:8]
    for ours, theirs in zip(in_engine.run(pixels), renormalised.run(pixels), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    folder = in_engine.source.parents[1]
    assert folder.name.startswith("leukoscope-renormalised-") and folder.is_dir()
    del in_engine
    gc.collect()
    assert not folder.exists()

    # A model without normalisation statistics (or without its weights) cannot be.
    squeezenet = Predictor.load(tiny.model_dir)
    assert not squeezenet.renormalisable
    with pytest.raises(LeukoscopeError, match="cannot be renormalised"):
        renormalised_for_sample(squeezenet, paths, UNSCALED)
    assert not dataclasses.replace(predictor, weights=None).renormalisable  # an export alone


def test_outputs_in_batches_are_the_outputs_at_once(tiny: Tiny, lab: Path) -> None:
    model, card = load_model(tiny.model_dir)
    cells = load_cells(lab, card)
    at_once = outputs(model, card, cells.pixels, batch_size=len(cells.pixels))
    batched = outputs(model, card, cells.pixels, batch_size=5)  # 18 cells: 5, 5, 5, 3
    assert len(batched) == len(at_once) == 2
    for whole, parts in zip(at_once, batched, strict=True):
        np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
