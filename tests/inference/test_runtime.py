from pathlib import Path
from typing import Any

import numpy as np
import pytest

from leukoscope.inference import predictor as predictor_module
from leukoscope.inference import runtime
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import (
    BF16_ENV,
    BF16_KEY,
    ENGINE_BATCH,
    ENGINES,
    FOLDER_EXPORTS,
    FULL_RANGE_INT8,
    ONNX_NAME,
    PRECISION_KEY,
    QUICK_START_FILES,
    engines_for,
    in_batches,
    open_export,
    openvino_precision,
    turned_views,
    unsure_of_first_view,
    with_extra_views,
)
from leukoscope.machine import has_int8_dot_product
from leukoscope.models import load_card
from tests.conftest import REPO

RELEASED = sorted(card.parent for card in (REPO / "models").glob("*/model_card.json"))


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_released_exports_belong_to_their_weights_and_name_their_precision(folder: Path) -> None:
    card = load_card(folder / "model_card.json")
    precisions = {}
    for name in FOLDER_EXPORTS:
        if (folder / name).is_file():
            export = open_export(folder / name, "onnx")
            export.check(card, str(folder))  # the card's weights and test-time views
            precisions[name] = export.metadata[PRECISION_KEY]
    # Every model has its fp32 export, which also stands in for an 8-bit int8 one on CPUs
    # without int8 dot-product instructions.
    assert precisions.pop(ONNX_NAME) == "fp32"
    assert set(precisions.values()) <= {"int8", FULL_RANGE_INT8}


def test_auto_runs_each_arch_in_its_faster_engine_first() -> None:
    assert engines_for("auto") == engines_for("auto", "squeezenet1_1") == ENGINES
    assert engines_for("auto", "efficientnet_lite0") == ("openvino", "onnx")
    assert engines_for("onnx", "efficientnet_lite0") == ("onnx",)  # asked for by name
    # A small job starts sooner in ONNX Runtime, whatever the arch.
    few, many = QUICK_START_FILES - 1, QUICK_START_FILES
    assert engines_for("auto", "efficientnet_lite0", few) == ENGINES
    assert engines_for("auto", "efficientnet_lite0", many) == ("openvino", "onnx")
    assert engines_for("openvino", "efficientnet_lite0", few) == ("openvino",)
    folder = REPO / "models" / "wbc5-efficientnet_lite0"
    assert Predictor.load(folder).backend == "openvino"
    assert Predictor.load(folder / ONNX_NAME).backend == "openvino"  # its card is beside it
    assert Predictor.load(folder, files=few).backend == ENGINES[0]
    assert Predictor.load(folder / ONNX_NAME, files=few).backend == ENGINES[0]
    assert Predictor.load(folder, files=many).backend == "openvino"
    assert Predictor.load(REPO / "models" / "wbc5-squeezenet1_1").backend == ENGINES[0]
    # Its fallback (an EfficientNet) opens in the engine for the number of cells it classifies
    # in a job of known size.
    fallback = Predictor.load(REPO / "models" / "wbc5-squeezenet1_1-128", files=1).fallback_for(few)
    assert fallback is not None and fallback.backend == ENGINES[0]


def test_a_fallback_opens_for_its_cells_only_in_a_job_of_known_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Recorded, not opened: each OpenVINO model opened in the suite's process made a later
    # fork (a browser, a fresh interpreter) likelier to crash it.
    opened: list[int | None] = []
    monkeypatch.setattr(
        predictor_module, "_load_fallback", lambda path, card, backend, files: opened.append(files)
    )
    fast = REPO / "models" / "wbc5-squeezenet1_1-128"
    Predictor.load(fast, files=1000).fallback_for(40)
    Predictor.load(fast).fallback_for(3)  # a server's: the arch's faster engine
    assert opened == [40, None]


@pytest.mark.parametrize("views", [4, 8])
def test_turned_views_are_the_networks_symmetric_views(views: int) -> None:
    torch = pytest.importorskip("torch")
    from leukoscope.inference.pixel_model import symmetric_views

    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    ours = {view.tobytes() for view in turned_views(pixels, views)}
    network = symmetric_views(torch.from_numpy(pixels), views, dims=(1, 2))
    assert len(ours) == views
    assert ours == {view.contiguous().numpy().tobytes() for view in network}


def test_extra_views_run_for_the_unsure_images_only_and_average_their_logits() -> None:
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(4 * 4 * 3, 3))
    calls: list[int] = []

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(pixels))
        features = pixels.reshape(len(pixels), -1).astype(np.float32) / 255
        return features @ weights, features

    pixels = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    first = run(pixels)
    every = [run(view) for view in turned_views(pixels, 4)]
    averaged = np.mean([outputs[0] for outputs in every], axis=0)
    confidence = 1 / np.exp(first[0] - first[0].max(axis=1, keepdims=True)).sum(axis=1)
    below = float(np.median(confidence))
    unsure = confidence < below
    calls.clear()
    logits, features = with_extra_views(run, 4, 1.0, below)(pixels)
    assert calls == [6, 3 * int(unsure.sum())]  # one pass of all, one of the others' views
    np.testing.assert_allclose(logits[unsure], averaged[unsure], rtol=1e-5)
    np.testing.assert_array_equal(logits[~unsure], first[0][~unsure])
    np.testing.assert_array_equal(features, first[1])  # the abstention's: always one view
    calls.clear()
    with_extra_views(run, 4, 1.0, 0.0)(pixels)
    assert calls == [6]  # every image sure: the first view only


def test_an_engine_computes_a_batch_in_calls_of_at_most_engine_batch_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(pixels))
        features = pixels.reshape(len(pixels), -1).astype(np.float32)
        return features[:, :2] * 2, features

    pixels = np.random.default_rng(2).integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)
    logits, features = in_batches(run, 4)(pixels)
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(logits, run(pixels)[0])  # in order, nothing lost
    np.testing.assert_array_equal(features, run(pixels)[1])
    calls.clear()
    in_batches(run, 4)(pixels[:3])
    assert calls == [3]
    # A released export opened by each engine: a decoder's batch of 64 gives the same outputs
    # as images computed one by one.
    folder = REPO / "models" / "wbc5-squeezenet1_1-128"
    one = np.random.default_rng(3).integers(0, 256, (64, 128, 128, 3), dtype=np.uint8)
    for engine in ENGINES:
        export = open_export(folder / ONNX_NAME, engine)
        batched = export.run(one)[0]
        single = np.concatenate([export.run(one[i : i + 1])[0] for i in range(len(one))])
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)
    assert 1 < ENGINE_BATCH < 64
    # An export takes ENGINE_BATCH as it stands when it is opened (benchmarks/engine_batch.py
    # sets it to compare call sizes).
    real_runner = runtime.onnx_runner

    def counted(session: Any) -> Any:
        inner = real_runner(session)

        def run_counted(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(len(pixels))
            return inner(pixels)

        return run_counted

    monkeypatch.setattr(runtime, "onnx_runner", counted)
    monkeypatch.setattr(runtime, "ENGINE_BATCH", 5)
    calls.clear()
    open_export(folder / ONNX_NAME, "onnx").run(one[:12])
    assert calls == [5, 5, 2]


def test_the_images_unsure_of_their_first_view_are_those_under_the_calibrated_confidence() -> None:
    logits = np.array([[4.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # confidence 0.982, 0.731, 0.5
    np.testing.assert_array_equal(unsure_of_first_view(logits, 1.0, 0.9), [False, True, True])
    # a temperature above one softens every confidence: the first image needs its views too
    np.testing.assert_array_equal(unsure_of_first_view(logits, 4.0, 0.9), [True, True, True])
    np.testing.assert_array_equal(unsure_of_first_view(logits, 1.0, 0.5), [False, False, False])


@pytest.mark.parametrize(
    ("stamp", "amx", "env", "expected"),
    [
        ("1", True, None, "bf16"),
        ("1", True, "0", "f32"),  # asked for fp32
        ("1", False, None, "f32"),  # no AMX: bf16 would be emulated, or slower
        (None, True, None, "f32"),  # bf16 never checked for this export
    ],
)
def test_openvino_computes_in_bf16_only_exports_checked_for_it_on_amx(
    monkeypatch: pytest.MonkeyPatch, stamp: str | None, amx: bool, env: str | None, expected: str
) -> None:
    monkeypatch.setattr("leukoscope.inference.runtime.has_bf16_matrix_units", lambda: amx)
    if env is None:
        monkeypatch.delenv(BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(BF16_ENV, env)
    metadata = {} if stamp is None else {BF16_KEY: stamp}
    assert openvino_precision(metadata) == expected


def _qdq_conv(path: Path, weights: np.ndarray, scales: tuple[float, float, float]) -> None:
    """A 1x1 convolution between quantise and dequantise steps, as ONNX Runtime's static
    quantisation writes it: uint8 pixels in, int8 weights, uint8 output, dequantised."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    x_scale, w_scale, y_scale = scales
    channels = weights.shape[1]
    initializers = [
        numpy_helper.from_array(weights.reshape(*weights.shape, 1, 1), "w"),
        numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"]),
        helper.make_node("Conv", ["xf", "wf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_exact_int8_session_computes_8_bit_weights_as_integer_arithmetic_does(
    tmp_path: Path,
) -> None:
    """What CPUs with VNNI or AMX compute: the uint8 x int8 products summed exactly in 32 bits,
    then scaled and rounded to the output's uint8 steps. Large pixels and 8-bit weights make
    sums of two products that a 16-bit accumulator cannot hold (2 x 255 x 127 > 32,767)."""
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    weights = rng.integers(100, 128, (3, 64), dtype=np.int8)
    pixels = rng.integers(200, 256, (1, 64, 4, 4), dtype=np.uint8)
    scales = (0.5, 0.25, 1024.0)  # powers of two: every fp32 step of the graph is exact
    path = tmp_path / "qdq.onnx"
    _qdq_conv(path, weights, scales)
    sums = np.einsum("oc,nchw->nohw", weights.astype(np.int64), pixels.astype(np.int64))
    steps = np.clip(np.rint(sums * scales[0] * scales[1] / scales[2]), 0, 255)
    exact = runtime.onnx_session(path, exact_int8=True).run(None, {"x": pixels})[0]
    np.testing.assert_array_equal(exact, steps * scales[2])
    assert len(np.unique(steps)) > 1  # the steps are not all clipped to one end
    if has_int8_dot_product() is False:  # why the option exists: fused kernels saturate here
        fused = runtime.onnx_session(path).run(None, {"x": pixels})[0]
        assert not np.array_equal(fused, exact)
