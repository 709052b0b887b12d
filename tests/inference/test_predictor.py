import dataclasses
import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from leukoscope.data.preprocess import Framing
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.calibrate import calibrate
from leukoscope.inference.export import export_fp32, onnx_parity
from leukoscope.inference.pixel_model import PixelModel
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.inference.runtime import CARD_KEY, ENGINES, FULL_RANGE_INT8, PRECISION_KEY
from leukoscope.models import load_model, update_card
from tests.cells.drawing import drawn_cell
from tests.conftest import cell_image
from tests.inference.tiny import CLASSES, SIZE, Tiny, build_cascade


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    cell_image(seed, size=96).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_prediction_carries_every_class_and_the_runner_up(untrained: Path) -> None:
    predictor = Predictor.load(untrained)
    prediction = predictor.predict_bytes(jpeg_bytes(1), "upload.jpg")
    assert prediction.error is None
    assert prediction.source == "upload.jpg"
    assert set(prediction.probabilities) == set(CLASSES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    ranked = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])
    assert (prediction.label, prediction.confidence) == ranked[0]
    assert (prediction.runner_up, prediction.runner_up_probability) == ranked[1]
    assert not prediction.uncertain  # an uncalibrated model flags nothing
    assert set(prediction.to_dict()) == set(Prediction.__dataclass_fields__)


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg_bytes(2)[:200]])
def test_bad_bytes_give_an_error_prediction(untrained: Path, data: bytes) -> None:
    prediction = Predictor.load(untrained).predict_bytes(data, "bad.jpg")
    assert prediction.label is None
    assert prediction.error is not None and prediction.error.startswith("bad.jpg: ")
    assert prediction.confidence == 0.0
    assert prediction.uncertain


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_paths_keeps_input_order_and_reports_bad_files(
    tmp_path: Path, untrained: Path, workers: int
) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"cell_{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes(i))
    (tmp_path / "broken.jpg").write_text("nope")
    paths.insert(2, tmp_path / "broken.jpg")
    predictor = Predictor.load(untrained)
    progress: list[int] = []
    predictions = predictor.predict_paths(
        paths, batch_size=2, workers=workers, on_progress=progress.append
    )
    assert [p.source for p in predictions] == [str(p) for p in paths]
    assert [p.error is not None for p in predictions] == [i == 2 for i in range(6)]
    assert sum(progress) == 6
    single = predictor.predict_images([Image.open(paths[0])], ["x"])[0]
    assert single.probabilities == pytest.approx(predictions[0].probabilities, abs=1e-5)


def test_auto_backend_uses_a_matching_onnx_export(
    tmp_path: Path, tiny: Tiny, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(tiny.model_dir, model_dir)
    assert Predictor.load(model_dir).backend == "torch"
    export_fp32(model_dir, model_dir / "model.onnx")
    predictor = Predictor.load(model_dir)
    assert (predictor.backend, predictor.source) == (ENGINES[0], model_dir / "model.onnx")
    shutil.copy(model_dir / "model.onnx", model_dir / "model.int8.onnx")  # int8 goes first
    assert Predictor.load(model_dir).source == model_dir / "model.int8.onnx"
    (model_dir / "model.int8.onnx").write_bytes(b"broken")
    with caplog.at_level(logging.WARNING):
        assert Predictor.load(model_dir).source == model_dir / "model.onnx"
    assert "model.int8.onnx" in caplog.text and "using model.onnx" in caplog.text
    images = [cell_image(i, size=96) for i in range(4)]
    names = [str(i) for i in range(4)]
    torch_predictions = Predictor.load(model_dir, backend="torch").predict_images(images, names)
    for engine in ENGINES:
        exported = Predictor.load(model_dir, backend=engine)
        assert exported.backend == engine
        predictions = exported.predict_images(images, names)
        for a, b in zip(predictions, torch_predictions, strict=True):
            assert a.label == b.label and a.uncertain == b.uncertain
            assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
            assert a.score == pytest.approx(b.score, abs=1e-3)


def test_8_bit_int8_runs_only_where_the_cpu_computes_it_exactly(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(tiny.model_dir, model_dir)
    export_fp32(model_dir, model_dir / "model.onnx")
    graph = onnx.load(str(model_dir / "model.onnx"))  # stamped as 8-bit int8: the graph aside
    next(p for p in graph.metadata_props if p.key == PRECISION_KEY).value = FULL_RANGE_INT8
    onnx.save(graph, str(model_dir / "model.int8.onnx"))

    monkeypatch.setattr("leukoscope.machine.has_int8_dot_product", lambda: True)
    assert Predictor.load(model_dir).source == model_dir / "model.int8.onnx"
    monkeypatch.setattr("leukoscope.machine.has_int8_dot_product", lambda: False)
    with caplog.at_level(logging.INFO):
        assert Predictor.load(model_dir, backend="onnx").source == model_dir / "model.onnx"
    assert "8-bit int8 weights" in caplog.text and "using model.onnx" in caplog.text
    (model_dir / "model.onnx").unlink()
    with pytest.raises(LeukoscopeError, match="without int8 dot-product instructions"):
        Predictor.load(model_dir, backend="onnx")
    assert Predictor.load(model_dir).backend == "torch"
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # asked for by name: run, with a warning
        assert Predictor.load(model_dir / "model.int8.onnx").source.name == "model.int8.onnx"
    assert "its classes may differ" in caplog.text


def test_a_stale_export_is_not_used(tmp_path: Path, untrained: Path, tiny: Tiny) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(untrained, model_dir)
    export_fp32(tiny.model_dir, model_dir / "model.onnx")  # other weights
    assert Predictor.load(model_dir).backend == "torch"
    with pytest.raises(LeukoscopeError, match="other weights"):
        Predictor.load(model_dir, backend="onnx")


def test_onnx_backend_needs_an_export(untrained: Path) -> None:
    with pytest.raises(LeukoscopeError, match="no such exported model"):
        Predictor.load(untrained, backend="onnx")
    with pytest.raises(LeukoscopeError, match="unknown backend"):
        Predictor.load(untrained, backend="tensorrt")


def test_predict_images_checks_names(untrained: Path) -> None:
    predictor = Predictor.load(untrained)
    assert predictor.predict_images([], []) == []
    with pytest.raises(ValueError):
        predictor.predict_images([Image.new("RGB", (8, 8))], [])
    assert np.isfinite(predictor.predict_images([Image.new("L", (8, 8))], ["grey"])[0].score)


@pytest.mark.parametrize("views", [4, 8])
def test_test_time_views_make_predictions_independent_of_turns(untrained: Path, views: int) -> None:
    model, card = load_model(untrained)
    single = PixelModel.from_card(model, card)
    averaged = PixelModel.from_card(model, card.replace(test_time_views=views))
    pixels = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    turned = pixels.rot90(1, (1, 2))
    with torch.no_grad():
        logits, features = averaged(pixels)
        scale = float(logits.abs().max())
        assert (averaged(turned)[0] - logits).abs().max() <= 1e-4 * scale
        assert (single(turned)[0] - single(pixels)[0]).abs().max() > 1e-3 * scale
        if views == 8:
            assert (averaged(pixels.flip(2))[0] - logits).abs().max() <= 1e-4 * scale
        # the average of the single-view outputs of the turned (and mirrored) images
        mirrored = [pixels.flip(2)] if views == 8 else []
        each = [single(p.rot90(k, (1, 2))) for p in (pixels, *mirrored) for k in range(4)]
        assert torch.allclose(
            logits, torch.stack([e[0] for e in each]).mean(0), rtol=1e-4, atol=1e-5
        )
        assert torch.allclose(
            features, torch.stack([e[1] for e in each]).mean(0), rtol=1e-4, atol=1e-5
        )
    assert features.shape == (3, model.num_features)
    with pytest.raises(LeukoscopeError, match="test-time views"):
        PixelModel.from_card(model, card.replace(test_time_views=3))


@pytest.fixture
def exported_copy(tmp_path: Path, tiny: Tiny) -> Path:
    """A copy of the tiny model with its one-view export beside it."""
    model_dir = tmp_path / "m"
    shutil.copytree(tiny.model_dir, model_dir)
    export_fp32(model_dir, model_dir / "model.onnx")
    return model_dir


def test_views_are_set_with_the_calibration_and_kept_by_the_export(
    tmp_path: Path, tiny: Tiny, exported_copy: Path
) -> None:
    model_dir = exported_copy
    calibrate(model_dir, tiny.manifest, views=4, fit_per_class=4, out_dir=tmp_path / "report")
    card = load_model(model_dir)[1]
    assert card.test_time_views == 4
    before = load_model(tiny.model_dir)[1].calibration
    assert card.calibration is not None and before is not None
    assert card.calibration.temperature != before.temperature
    predictor = Predictor.load(model_dir)
    assert predictor.backend == "torch" and predictor.pixel_model.views == predictor.views == 4
    with pytest.raises(
        LeukoscopeError, match=r"with 1 view\(s\) of each image in its graph, not the 4"
    ):
        Predictor.load(model_dir, backend="onnx")
    export_fp32(model_dir, model_dir / "model.onnx")
    assert onnx_parity(model_dir, model_dir / "model.onnx") <= 1e-4
    assert Predictor.load(model_dir).backend == ENGINES[0]
    calibrate(model_dir, tiny.manifest, fit_per_class=4, out_dir=tmp_path / "report")
    assert load_model(model_dir)[1].test_time_views == 4  # kept unless asked
    update_card(model_dir, test_time_views=1)
    assert Predictor.load(model_dir).backend == "torch"  # the export has 4 views


def test_extra_views_below_keeps_the_one_view_export_and_adds_views_where_unsure(
    tmp_path: Path, tiny: Tiny, exported_copy: Path
) -> None:
    model_dir = exported_copy
    calibrate(
        model_dir,
        tiny.manifest,
        views=4,
        extra_views_below=1.0,
        fit_per_class=4,
        out_dir=tmp_path / "report",
    )
    model, card = load_model(model_dir)
    assert card.test_time_views == 4 and card.extra_views_below == 1.0 and card.graph_views == 1
    pixels = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    mean, std = card.preprocessing.mean, card.preprocessing.std
    with torch.inference_mode():
        every = PixelModel(model, mean, std, 4)(torch.from_numpy(pixels))
        first = PixelModel(model, mean, std, 1)(torch.from_numpy(pixels))
    exported = Predictor.load(model_dir)  # the one-view export fits the card's graph
    assert exported.backend == ENGINES[0] and exported.views == 4
    for predictor in (exported, Predictor.load(model_dir, backend="torch")):
        logits, features = predictor.run(pixels)  # below 1.0: every image is unsure
        np.testing.assert_allclose(logits, every[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(features, first[1].numpy(), atol=1e-4)
    calibrate(model_dir, tiny.manifest, fit_per_class=4, out_dir=tmp_path / "report")
    assert load_model(model_dir)[1].extra_views_below == 1.0  # kept unless asked
    calibrate(model_dir, tiny.manifest, views=1, fit_per_class=4, out_dir=tmp_path / "report")
    assert load_model(model_dir)[1].extra_views_below is None  # one view has no others
    with pytest.raises(LeukoscopeError, match=r"extra_views_below 0\.5 needs test-time views"):
        update_card(model_dir, extra_views_below=0.5)


def test_a_framing_model_flags_an_image_without_a_cell_and_says_why(
    tmp_path: Path, untrained: Path
) -> None:
    model_dir = tmp_path / "framed"
    shutil.copytree(untrained, model_dir)
    card = load_model(untrained)[1]
    framed = dataclasses.replace(card.preprocessing, framing=Framing())
    update_card(model_dir, preprocessing=framed)
    predictor = Predictor.load(model_dir)
    assert predictor.card.preprocessing.framing == Framing()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (236, 218, 206)).save(blank)
    cell = tmp_path / "cell.png"
    Image.fromarray(drawn_cell((150, 150), (70, 80), 80)).save(cell)
    by_path = predictor.predict_paths([blank, cell], workers=0)
    in_memory = predictor.predict_images([Image.open(blank), Image.open(cell)], ["b", "c"])
    for no_cell, found in (by_path, in_memory):
        assert no_cell.uncertain and no_cell.label is not None  # classified, but flagged
        assert no_cell.note is not None and "no white cell found" in no_cell.note
        assert found.note is None and not found.uncertain  # uncalibrated: nothing else flags


def test_an_export_alone_is_a_complete_model(tmp_path: Path, tiny: Tiny) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(tiny.model_dir, model_dir)
    export_fp32(model_dir, model_dir / "model.onnx")
    alone = tmp_path / "elsewhere" / "cells.onnx"
    alone.parent.mkdir()
    shutil.copy(model_dir / "model.onnx", alone)
    images = [cell_image(i, size=96) for i in range(6)] + [Image.new("RGB", (96, 96), "white")]
    names = [str(i) for i in range(len(images))]
    in_folder = Predictor.load(model_dir, backend="torch").predict_images(images, names)
    for engine in ENGINES:
        predictor = Predictor.load(alone, backend=engine)
        assert predictor.card == load_model(model_dir)[1] and predictor.weights is None
        assert predictor.abstainer is not None
        for a, b in zip(predictor.predict_images(images, names), in_folder, strict=True):
            assert (a.label, a.uncertain) == (b.label, b.uncertain)
            assert a.score == pytest.approx(b.score, abs=1e-3)
        with pytest.raises(LeukoscopeError, match=r"cells\.onnx.*weights"):
            _ = predictor.model  # explanations need the PyTorch weights


def test_an_export_without_its_card_is_refused_by_name(tmp_path: Path, tiny: Tiny) -> None:
    out = export_fp32(tiny.model_dir, tmp_path / "model.onnx")
    graph = onnx.load(str(out))
    kept = [p for p in graph.metadata_props if p.key != CARD_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(tmp_path / "old.onnx"))
    with pytest.raises(LeukoscopeError, match=r"old\.onnx: the export carries no model card"):
        Predictor.load(tmp_path / "old.onnx")
    with pytest.raises(LeukoscopeError, match="no such exported model"):
        Predictor.load(tmp_path / "missing.onnx", backend="onnx")


def test_predicting_with_an_export_never_imports_torch(tmp_path: Path, tiny: Tiny) -> None:
    out = export_fp32(tiny.model_dir, tmp_path / "cells.onnx")
    image = tmp_path / "cell.jpg"
    cell_image(3, size=96).save(image)
    script = (
        "import sys\n"
        "from leukoscope.cli import main\n"
        f"sys.argv = ['leukoscope', 'predict', {str(image)!r}, '--model', {str(out)!r},"
        f" '--out', {str(tmp_path / 'p.csv')!r}, '--backend', sys.argv[1]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'timm',"
        " 'sklearn', 'scipy'})\n"
        "print('heavy:', heavy)\n"
    )
    for engine in ENGINES:
        result = subprocess.run(
            [sys.executable, "-c", script, engine], capture_output=True, text=True, check=True
        )
        assert "heavy: []" in result.stdout, result.stdout + result.stderr
        rows = (tmp_path / "p.csv").read_text().splitlines()
        assert len(rows) == 2 and rows[1].startswith(str(image))


@pytest.fixture
def cascade(tmp_path: Path, tiny: Tiny, untrained: Path) -> Path:
    return build_cascade(tmp_path, tiny, untrained)


def _test_split_alone(tiny: Tiny, cascade: Path) -> tuple[list[Path], list[Prediction]]:
    """The tiny model's test files and their predictions by the cascade's first model alone."""
    paths = [path for path, _ in tiny.split("test")]
    return paths, Predictor.load(cascade, fallback=False).predict_paths(paths)


def test_a_fallback_classifies_the_cells_the_model_flags_uncertain(
    tmp_path: Path, tiny: Tiny, cascade: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [path for path, _ in tiny.split("test")] + [bad]
    alone = Predictor.load(cascade, fallback=False).predict_paths(paths)
    slow = Predictor.load(cascade.parent / "slow").predict_paths(paths)
    predictor = Predictor.load(cascade)
    both = predictor.predict_paths(paths)
    flagged = [p.uncertain and p.error is None for p in alone]
    assert 0 < sum(flagged) < len(paths) - 1
    assert [p.fallback for p in both] == flagged
    assert both[-1].error is not None and not both[-1].fallback
    assert any(s.label != a.label for s, a in zip(slow, alone, strict=True) if s.error is None)
    for a, s, b in zip(alone, slow, both, strict=True):
        expected = s if b.fallback else a  # the call: the fallback's where the model was unsure
        assert (b.source, b.label) == (expected.source, expected.label)
        assert b.probabilities == pytest.approx(expected.probabilities)
        assert (b.uncertain, b.score) == (a.uncertain, a.score)  # the flag: always the model's
    assert predictor.check_shift(both) == predictor.check_shift(alone)
    images = [Image.open(path) for path in paths[:-1]]
    from_images = predictor.predict_images(images, [str(path) for path in paths[:-1]])
    assert [p.fallback for p in from_images] == flagged[:-1]
    assert [p.label for p in from_images] == [p.label for p in both[:-1]]


def test_the_fallback_is_loaded_only_for_a_cell_that_needs_it(tiny: Tiny, cascade: Path) -> None:
    paths, alone = _test_split_alone(tiny, cascade)
    predictor = Predictor.load(cascade)
    shutil.rmtree(cascade.parent / "slow")  # after loading: unnoticed while no cell needs it
    confident = [p.source for p in alone if not p.uncertain]
    assert [p.label for p in predictor.predict_paths(confident)] == [
        p.label for p in alone if not p.uncertain
    ]
    with pytest.raises(LeukoscopeError, match="slow"):
        predictor.predict_paths(paths)


def test_a_missing_fallback_keeps_the_calls_and_says_so(
    tiny: Tiny, cascade: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, alone = _test_split_alone(tiny, cascade)
    shutil.rmtree(cascade.parent / "slow")
    with caplog.at_level(logging.WARNING):
        predictions = Predictor.load(cascade).predict_paths(paths)
    assert "its fallback model" in caplog.text and "is not there" in caplog.text
    assert predictions == alone


def test_a_fallback_with_other_weights_is_refused(cascade: Path) -> None:
    card = load_model(cascade)[1]
    assert card.fallback is not None
    update_card(cascade, fallback=dataclasses.replace(card.fallback, sha256="0" * 64))
    with pytest.raises(LeukoscopeError, match="not the fallback model"):
        Predictor.load(cascade)


def test_a_sample_uploaded_cell_by_cell_is_judged_with_its_earlier_cells(
    tiny: Tiny, cascade: Path
) -> None:
    paths, alone = _test_split_alone(tiny, cascade)
    predictor = Predictor.load(cascade)
    path = next(p for p, a in zip(paths, alone, strict=True) if a.uncertain)
    with Image.open(path) as image:
        cell = image.convert("RGB")
    calm, shifted = [False] * 40, [True] * 40  # the sample's cells so far, by their flags
    assert predictor.predict_images([cell], ["flagged"], earlier=calm)[0].fallback
    assert not predictor.predict_images([cell], ["flagged"], earlier=shifted)[0].fallback
    check = predictor.check_shift([alone[0]], earlier=shifted)
    assert check is not None and check.shifted


def test_a_sample_unlike_the_training_data_keeps_the_models_calls(
    tiny: Tiny, cascade: Path, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("shifted_samples")
    paths = [path for path, _ in tiny.split("test")]
    both, alone = (Predictor.load(cascade, fallback=f).predict_paths(paths) for f in (True, False))
    assert both == alone and any(p.uncertain for p in both)
