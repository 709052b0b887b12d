"""One preprocessing for every path: the ONNX graph sees the pixels training saw."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.data.batches import pixel_batches
from leukoscope.data.datasets import Sample
from leukoscope.data.images import decode_rgb
from leukoscope.data.preprocess import (
    UNSCALED,
    Augmentation,
    Framing,
    Interpolation,
    Preprocessing,
    cell_fraction,
    create_transform,
    estimate_scale,
    reference_scale,
    rescale,
    resize,
    spread,
    to_noted_pixels,
    to_pixels,
)
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.export import export_fp32
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import ENGINES
from leukoscope.models import ModelCard, create_model, get_config, save_model
from leukoscope.training.cache import build_image_cache
from tests.cells.drawing import drawn_cell
from tests.conftest import cell_image


@pytest.mark.parametrize(
    ("interpolation", "framing"),
    [("bilinear", None), ("bicubic", None), ("bilinear", Framing())],
)
def test_the_onnx_graph_sees_the_pixels_training_sees(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    interpolation: Interpolation,
    framing: Framing | None,
) -> None:
    monkeypatch.setenv("LEUKOSCOPE_CACHE", str(tmp_path / "cache"))
    image_path = tmp_path / "cell.png"
    Image.fromarray(drawn_cell((300, 300), (120, 170), 150)).save(image_path)
    config = get_config("squeezenet1_1")
    preprocessing = Preprocessing(64, config.mean, config.std, interpolation, framing)
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", 3, weights="none").eval()
    model_dir = tmp_path / "model"
    card = ModelCard("squeezenet1_1", ("a", "b", "c"), model.head_config, preprocessing)
    save_model(model_dir, model, card)
    export_fp32(model_dir, model_dir / "model.onnx")
    predictor = Predictor.load(model_dir)
    assert predictor.backend == ENGINES[0]

    # Training: the decoded-image cache, then the evaluation transform of the training loop.
    cache = build_image_cache([Sample(image_path, 0)], preprocessing, "key", workers=0)
    trained_pixels = torch.from_numpy(np.array(cache.images[0]))  # (3, H, W) uint8
    trained_input = create_transform(preprocessing)(trained_pixels)
    # Prediction: the decoding that feeds the exported graph (and the PyTorch dataset made the
    # same way), and the normalisation inside the graph.
    graph_pixels = next(pixel_batches([image_path], preprocessing, workers=2)).pixels
    dataset_pixels = predictor.dataset([Sample(image_path)])[0]["image"]  # (H, W, 3) uint8
    assert torch.equal(torch.from_numpy(graph_pixels[0]).permute(2, 0, 1), trained_pixels)
    assert torch.equal(dataset_pixels.permute(2, 0, 1), trained_pixels)
    graph_input = predictor.pixel_model.normalise(torch.from_numpy(graph_pixels))[0]
    assert torch.equal(graph_input, trained_input)
    # What the graph computes from those pixels is what the trained network computes.
    with torch.no_grad():
        torch_logits = model(trained_input[None]).numpy()
    scale = max(1.0, float(np.abs(torch_logits).max()))
    for engine in ENGINES:
        exported_logits = Predictor.load(model_dir, backend=engine).run(graph_pixels)[0]
        assert np.abs(exported_logits - torch_logits).max() / scale <= 1e-4


def test_the_interpolation_is_the_cards() -> None:
    rgb = np.asarray(cell_image(2, size=200))
    bilinear = resize(rgb, 50, "bilinear")
    assert not np.array_equal(bilinear, resize(rgb, 50, "bicubic"))
    config = Preprocessing(50, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert np.array_equal(to_pixels(cell_image(2, size=200), config), resize(rgb, 50, "bicubic"))


def test_evaluation_transform_is_deterministic_and_training_is_not() -> None:
    config = Preprocessing(16, (0.5,) * 3, (0.25,) * 3)
    pixels = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    plain = create_transform(config)
    expected = (pixels.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(plain(pixels), expected)
    assert torch.equal(plain(pixels), plain(pixels))
    torch.manual_seed(0)
    augment = create_transform(config, Augmentation(colour_jitter=0.2, hed_sigma=0.05))
    assert any(not torch.equal(augment(pixels), plain(pixels)) for _ in range(4))


def test_any_image_mode_becomes_rgb_pixels(tmp_path: Path) -> None:
    path = tmp_path / "cell.png"
    cell_image(1, size=80).convert("L").save(path)
    config = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    pixels = to_pixels(decode_rgb(path), config)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_an_image_used_as_it_is_gets_the_pixels_of_its_rgb_array(mode: str) -> None:
    """The unrescaled, unframed shortcut resizes the decoded image itself: the same pixels as
    the general path (its RGB array rescaled, framed, then resized)."""
    image = cell_image(2, size=90).convert(mode)
    config = Preprocessing(40, (0.5,) * 3, (0.5,) * 3)
    pixels, note = to_noted_pixels(image, config)
    assert note is None
    np.testing.assert_array_equal(pixels, resize(np.asarray(image.convert("RGB")), 40))
    np.testing.assert_array_equal(
        to_noted_pixels(image, config, 1.0 + 1e-9)[0], pixels
    )  # the general path, with an immaterial factor


def test_framing_centres_the_cell_at_the_cards_fraction_and_notes_a_missing_cell() -> None:
    config = Preprocessing(100, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), framing=Framing(0.4))
    # A tecom-like tight, off-centre crop.
    tight = Image.fromarray(drawn_cell((120, 120), (70, 55), 72))
    pixels, note = to_noted_pixels(tight, config)
    assert note is None and pixels.shape == (100, 100, 3)
    dark = pixels.sum(axis=2) < np.percentile(pixels.sum(axis=2), 50) - 60  # stained pixels
    rows, columns = np.nonzero(dark)
    assert abs(rows.mean() - 50) < 5 and abs(columns.mean() - 50) < 5  # centred
    diameter = 2 * np.sqrt(dark.sum() / np.pi)
    assert 0.3 < diameter / 100 < 0.5  # about the card's 0.4, whatever the source crop
    unframed = to_pixels(tight, Preprocessing(100, (0.5,) * 3, (0.25,) * 3))
    assert not np.array_equal(unframed, pixels)
    blank, why = to_noted_pixels(Image.new("RGB", (90, 90), (235, 220, 210)), config)
    assert blank.shape == (100, 100, 3)
    assert why is not None and why.startswith("no white cell found for framing")


def _sample(diameters: list[float], side: int = 200) -> list[np.ndarray]:
    """Single-cell images of one sample, each cell of the given diameter at the centre."""
    return [
        drawn_cell((side, side), (side / 2, side / 2), d, seed=i) for i, d in enumerate(diameters)
    ]


def _by_size(images: Sequence[np.ndarray], factor: float) -> list[str]:
    """A classifier that tells the two drawn classes apart by the cell's size in the frame, and
    still does at the overall median's factor (as the released models still recognise most
    PBC lymphocytes of a lymphocytes-only sample at its first factor, 0.77)."""
    return [
        "large" if (cell_fraction(rescale(rgb, factor)) or 0) > 0.46 else "small" for rgb in images
    ]


def test_a_magnified_sample_is_rescaled_to_the_training_size() -> None:
    training = reference_scale(_sample([60, 64, 68, 100, 104, 108]), ["small"] * 3 + ["large"] * 3)
    assert training.cells == 6 and 0.35 < training.cell_fraction < 0.5
    assert training.class_fractions["small"] < 0.36 < 0.48 < training.class_fractions["large"]
    scale = dataclasses.replace(training, min_cells=4)
    magnified = estimate_scale(_sample([90, 96, 100, 150, 156, 160]), scale, _by_size)
    assert 1.35 < magnified.factor < 1.65 and magnified.factor == magnified.measured
    assert "rescaled by 1/" in magnified.message
    # Like the training images: used as they are, the factor still measured and reported.
    alike = estimate_scale(_sample([62, 66, 68, 100, 102, 106]), scale, _by_size)
    assert alike.factor == 1.0 and alike.measured is not None and "as they are" in alike.message
    # Too few cells to trust a median, or a model without a scale: unchanged.
    assert estimate_scale(_sample([150, 156, 160]), scale, _by_size).factor == 1.0
    assert estimate_scale(_sample([150] * 5), None) is UNSCALED
    # Rescaled by the factor, the cells are the training size again.
    pixels, note = to_noted_pixels(
        Image.fromarray(_sample([156])[0]), Preprocessing(100, (0.5,) * 3, (0.25,) * 3), 1.56
    )
    fraction = cell_fraction(pixels)
    assert note is None and fraction is not None
    assert abs(fraction / training.class_fractions["large"] - 1) < 0.12


def test_a_sample_of_small_cells_is_not_read_as_shrunk_when_the_classes_are_known() -> None:
    training = reference_scale(_sample([60, 64, 68, 100, 104, 108]), ["small"] * 3 + ["large"] * 3)
    small_only = _sample([60, 62, 64, 66, 68])
    scale = dataclasses.replace(training, min_cells=4)
    assert estimate_scale(small_only, scale).factor < 0.9  # the overall median alone
    assert estimate_scale(small_only, scale, _by_size).factor == 1.0  # refined by class


def test_true_labels_measure_a_sample_that_a_model_misreads() -> None:
    training = reference_scale(_sample([60, 64, 68, 100, 104, 108]), ["small"] * 3 + ["large"] * 3)
    scale = dataclasses.replace(training, min_cells=4)
    magnified = _sample([90, 96, 100, 150, 156, 160])  # 1.5x the training size

    def wrong(images: Sequence[np.ndarray], factor: float) -> list[str]:
        return ["large"] * len(images)  # calls every cell large, as a shifted lab's may

    misread = estimate_scale(magnified, scale, wrong)
    labels = ["small"] * 3 + ["large"] * 3
    known = estimate_scale(magnified, scale, wrong, labels)
    assert misread.factor < 1.25  # the small cells measured against the large class
    assert 1.35 < known.factor < 1.65  # each against its own class: the model is not asked
    with pytest.raises(ValueError, match="6 images but 2 labels"):
        estimate_scale(magnified, scale, labels=["small", "large"])


def test_an_adapted_models_lab_factor_rescales_the_samples_that_confirm_it() -> None:
    training = reference_scale(_sample([60, 64, 68, 100, 104, 108]), ["small"] * 3 + ["large"] * 3)
    scale = dataclasses.replace(training, min_cells=4)
    magnified = _sample([90, 93, 96, 99, 150])  # 1.5x the training size, mostly small cells

    def right_near_the_lab(images: Sequence[np.ndarray], factor: float) -> list[str]:
        # at too low a factor every cell looks large, as other labs' lymphocytes look like
        # monocytes to a model at the plain median's factor
        return _by_size(images, factor) if factor > 1.3 else ["large"] * len(images)

    plain = estimate_scale(magnified, scale, right_near_the_lab)
    lab = dataclasses.replace(scale, lab_factor=1.5)
    started = estimate_scale(magnified, lab, right_near_the_lab)
    assert plain.factor < 1.25  # the first calls at the plain median pull the factor down
    assert 1.35 < started.factor < 1.65
    # Still measured: another microscope's sample gets its own factor.
    assert estimate_scale(_sample([62, 66, 68, 100, 102, 106]), lab, _by_size).factor == 1.0


def test_rescale_keeps_the_centre_and_fills_with_the_background() -> None:
    rgb = drawn_cell((100, 80), (50, 40), 30)
    out = rescale(rgb, 1.5)
    assert out.shape == (120, 150, 3)
    assert np.array_equal(out[20:100, 25:125], rgb)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    assert np.array_equal(out[0, 0], np.median(border, axis=0).astype(np.uint8))
    shrunk = rescale(rgb, 0.5)
    assert np.array_equal(shrunk, rgb[20:60, 25:75])
    assert rescale(rgb, 1.0) is rgb


def test_reference_scale_needs_a_cell() -> None:
    with pytest.raises(LeukoscopeError, match="no white cell"):
        reference_scale([np.full((50, 50, 3), 230, np.uint8)], ["small"])


def test_spread_takes_count_items_evenly_through_the_list() -> None:
    chosen = spread(list(range(100)), 32)
    assert len(chosen) == 32 and chosen[0] == 0 and chosen[-1] == 96
    assert max(b - a for a, b in itertools.pairwise(chosen)) == 4
    assert spread(list(range(5)), 8) == [0, 1, 2, 3, 4]
