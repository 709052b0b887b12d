import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from leukoscope.data.datasets import read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.inference.export import (
    FoldedPixelModel,
    export_fp32,
    export_int8,
    fold_normalisation,
    int8_agreement,
    onnx_parity,
    restamp,
)
from leukoscope.inference.pixel_model import PixelModel
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import (
    BF16_KEY,
    FULL_RANGE_INT8,
    INPUT_NAME,
    PRECISION_KEY,
    WEIGHTS_SHA_KEY,
    onnx_runner,
    onnx_session,
    open_export,
)
from leukoscope.machine import has_bf16_matrix_units, has_int8_dot_product
from leukoscope.models import create_model, get_config, load_model, update_card
from tests.inference.tiny import SIZE, Tiny


def test_fp32_export_matches_pytorch(tmp_path: Path, untrained: Path) -> None:
    out = export_fp32(untrained, tmp_path / "model.onnx")
    assert onnx_parity(untrained, out, n=3) <= 1e-4
    graph = onnx.load(str(out))
    assert graph.opset_import[0].version >= 17
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata[WEIGHTS_SHA_KEY] == load_model(untrained)[1].sha256
    run = onnx_runner(onnx_session(out))
    for batch in (1, 5):  # the batch axis is dynamic
        logits, features = run(np.zeros((batch, SIZE, SIZE, 3), dtype=np.uint8))
        assert logits.shape == (batch, 4) and features.shape[0] == batch
    assert graph.graph.input[0].name == INPUT_NAME
    # SqueezeNet's first convolution does not pad: the normalisation is folded into it.
    assert {"Sub", "Div"}.isdisjoint(node.op_type for node in graph.graph.node)


def test_normalisation_folds_only_where_exact(untrained: Path) -> None:
    model, card = load_model(untrained)
    pixel_model = PixelModel.from_card(model, card)
    first_weights = model.backbone[0][0].weight.clone()
    folded = fold_normalisation(pixel_model, SIZE)
    assert isinstance(folded, FoldedPixelModel)
    assert torch.equal(model.backbone[0][0].weight, first_weights)  # the original is untouched
    pixels = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected, actual = pixel_model(pixels)[0], folded(pixels)[0]
    scale = max(1.0, float(expected.abs().max()))
    assert float((expected - actual).abs().max()) / scale <= 1e-4
    assert not torch.equal(folded.model.backbone[0][0].weight, first_weights)

    # EfficientNet's stem pads: folding would change the border, so the model stays as it is.
    config = get_config("efficientnet_lite0")
    padded = PixelModel(
        create_model("efficientnet_lite0", 4, weights="none"), config.mean, config.std
    )
    assert fold_normalisation(padded.eval(), SIZE) is padded


def test_int8_export_predicts_like_fp32(tmp_path: Path, tiny: Tiny) -> None:
    out = export_int8(tiny.model_dir, tmp_path / "model.int8.onnx", tiny.manifest)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    agreement, n = int8_agreement(tiny.model_dir, out, tiny.manifest)
    assert n == 80
    assert agreement >= 0.9

    # evaluate scores the export itself (alone: it carries its card), on the test split.
    options = EvaluateOptions(backend="onnx", resamples=20, throughput_runs=0, heatmaps=False)
    metrics = evaluate_model(
        out,
        lambda classes: read_manifest(tiny.manifest, "test", classes)[0],
        "tiny test split",
        tmp_path / "eval",
        options=options,
    )
    reference = evaluate_model(
        tiny.model_dir,
        lambda classes: read_manifest(tiny.manifest, "test", classes)[0],
        "tiny test split",
        tmp_path / "eval-torch",
        options=replace(options, backend="torch"),
    )
    assert metrics["backend"] == "onnx" and reference["backend"] == "torch"
    assert (metrics["precision"], reference["precision"]) == ("int8", "fp32")
    assert metrics["n_images"] == reference["n_images"]
    assert abs(metrics["accuracy"] - reference["accuracy"]) <= 1 - agreement + 0.05
    assert "onnx backend in int8" in (tmp_path / "eval" / "report.md").read_text()


def _weight_extremes(path: Path) -> tuple[int, str]:
    """The largest magnitude of an int8 weight in a QDQ export, and its precision stamp."""
    model = onnx.load(str(path))
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == 3]
    precision = {p.key: p.value for p in model.metadata_props}[PRECISION_KEY]
    return max(int(np.abs(w.astype(np.int16)).max()) for w in weights), precision


def test_int8_weights_are_7_bit_unless_full_range(tmp_path: Path, tiny: Tiny) -> None:
    reduced = export_int8(tiny.model_dir, tmp_path / "r.onnx", tiny.manifest, images_per_class=4)
    full = export_int8(
        tiny.model_dir, tmp_path / "f.onnx", tiny.manifest, images_per_class=4, full_range=True
    )
    # Per-channel symmetric weights: each channel's largest weight maps to the range's end.
    assert _weight_extremes(reduced) == (64, "int8")
    assert _weight_extremes(full) == (127, FULL_RANGE_INT8)
    # As CPUs with int8 dot-product instructions compute it, on this CPU whatever it has.
    exact = not has_int8_dot_product()
    assert int8_agreement(tiny.model_dir, full, tiny.manifest, exact_int8=exact)[0] >= 0.9


def test_int8_calibration_choices(tmp_path: Path, tiny: Tiny) -> None:
    out = export_int8(tiny.model_dir, tmp_path / "minmax.onnx", tiny.manifest, calibration="minmax")
    assert int8_agreement(tiny.model_dir, out, tiny.manifest)[0] >= 0.9
    with pytest.raises(LeukoscopeError, match="unknown int8 calibration 'median'"):
        export_int8(tiny.model_dir, tmp_path / "x.onnx", tiny.manifest, calibration="median")
    assert not (tmp_path / "x.onnx").exists()


def test_restamp_carries_a_changed_card_into_the_export(
    tmp_path: Path, tiny: Tiny, untrained: Path
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(tiny.model_dir, model_dir)
    out = export_fp32(model_dir, model_dir / "model.onnx")
    graph = onnx.load(str(out)).graph
    card = load_model(model_dir)[1]
    assert card.calibration is not None
    calibration = replace(card.calibration, temperature=2 * card.calibration.temperature)
    update_card(model_dir, calibration=calibration)
    alone = tmp_path / "alone.onnx"
    shutil.copy(restamp(out, model_dir), alone)
    assert Predictor.load(alone).card.calibration == calibration
    assert onnx.load(str(out)).graph == graph  # the graph is untouched
    update_card(model_dir, test_time_views=4)
    with pytest.raises(
        LeukoscopeError, match=r"with 1 view\(s\) of each image in its graph, not the 4"
    ):
        restamp(out, model_dir)
    with pytest.raises(LeukoscopeError, match="other weights"):
        restamp(export_fp32(untrained, tmp_path / "other.onnx"), model_dir)


def test_bf16_stamp_keeps_the_graph_survives_restamping_and_runs_in_openvino(
    tmp_path: Path, tiny: Tiny
) -> None:
    def stamps(path: Path) -> dict[str, str]:
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    plain = export_fp32(tiny.model_dir, tmp_path / "plain.onnx")
    out = export_fp32(tiny.model_dir, tmp_path / "bf16.onnx", bf16=True)
    assert BF16_KEY not in stamps(plain) and stamps(out)[BF16_KEY] == "1"
    assert onnx.load(str(out)).graph == onnx.load(str(plain)).graph
    assert stamps(restamp(out, tiny.model_dir))[BF16_KEY] == "1"
    assert BF16_KEY not in stamps(restamp(plain, tiny.model_dir))
    pytest.importorskip("openvino")
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    reference = onnx_runner(onnx_session(plain))(pixels)[0]
    export = open_export(out, "openvino")
    assert export.precision == ("bf16" if has_bf16_matrix_units() else "fp32")
    assert open_export(plain, "openvino").precision == "fp32"
    logits = export.run(pixels)[0]
    assert np.allclose(logits, reference, atol=0.05 * max(1.0, float(np.abs(reference).max())))
    assert Predictor.load(out, backend="onnx").precision == "fp32"  # ONNX Runtime: fp32
