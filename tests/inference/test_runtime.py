from pathlib import Path

import pytest

from leukoscope.inference.runtime import (
    FOLDER_EXPORTS,
    FULL_RANGE_INT8,
    ONNX_NAME,
    PRECISION_KEY,
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
