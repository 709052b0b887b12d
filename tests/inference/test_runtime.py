from pathlib import Path

import pytest

from leukoscope.inference.predictor import Predictor
from leukoscope.inference.runtime import (
    ENGINES,
    FOLDER_EXPORTS,
    FULL_RANGE_INT8,
    ONNX_NAME,
    PRECISION_KEY,
    engines_for,
    open_export,
)
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
    folder = REPO / "models" / "wbc5-efficientnet_lite0"
    assert Predictor.load(folder).backend == "openvino"
    assert Predictor.load(folder / ONNX_NAME).backend == "openvino"  # its card is beside it
    assert Predictor.load(REPO / "models" / "wbc5-squeezenet1_1").backend == ENGINES[0]
