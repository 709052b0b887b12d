"""Model cards: typed, validated on load with the file named, the previous format migrated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.abstention import Abstainer
from leukoscope.models import (
    HeadConfig,
    ModelCard,
    create_model,
    load_card,
    load_model,
    save_card,
    save_model,
    update_card,
)
from leukoscope.models.card import (
    CARD_NAME,
    FORMAT,
    PREVIOUS_FORMAT,
    Abstention,
    BestEpoch,
    Calibration,
    Fallback,
    card_path,
    set_fallback,
)

REPO = Path(__file__).resolve().parents[2]
PRE = Preprocessing(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

V1_CARD: dict[str, Any] = {
    "format": PREVIOUS_FORMAT,
    "arch": "efficientnet_lite0",
    "classes": ["basophil", "eosinophil"],
    "head": {"hidden": 256, "dropout": 0.3},
    "input_size": 224,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
    "manifest_sha256": "ab" * 32,
    "metrics": {
        "split": "val",
        "epoch": 3,
        "phase": "finetune",
        "val_loss": 0.5,
        "val_accuracy": 0.9,
        "val_macro_f1": 0.8,
    },
    "calibration": {
        "temperature": 0.5,
        "ece_before": 0.1,
        "ece_after": 0.01,
        "n": 9,
        "split": "val",
    },
    "test_time_views": 4,
    "sha256": "cd" * 32,
}


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_previous_format_card_loads_into_the_typed_sections(tmp_path: Path) -> None:
    card = load_card(_write(tmp_path / "model_card.json", V1_CARD))
    assert card.preprocessing == Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    assert card.head == HeadConfig(256, 0.3)
    assert card.classes == ("basophil", "eosinophil")
    assert card.validation == BestEpoch(3, "finetune", 0.5, 0.9, 0.8)
    assert card.calibration == Calibration(0.5, 0.1, 0.01, 9, "val")
    assert card.test_time_views == 4 and card.abstention is None
    save_card(card, tmp_path / "migrated.json")
    on_disk = json.loads((tmp_path / "migrated.json").read_text())
    assert on_disk["format"] == FORMAT and "input_size" not in on_disk
    assert load_card(tmp_path / "migrated.json") == card


@pytest.mark.parametrize("name", ["pbc8-efficientnet_lite0", "wbc5-squeezenet1_1"])
def test_released_cards_are_current_and_record_how_the_model_was_trained(name: str) -> None:
    path = REPO / "models" / name / "model_card.json"
    assert json.loads(path.read_text())["format"] == FORMAT
    card = load_card(path)
    # The released models were trained and evaluated with bilinear resizing, whatever the
    # registry now proposes for new runs of the arch.
    assert card.preprocessing.interpolation == "bilinear"
    assert card.release is not None and card.release.name == name
    assert card.test_metrics is not None and card.test_metrics.n_images > 0


@pytest.mark.parametrize("name", ["wbc5-efficientnet_lite0", "pbc8-efficientnet_lite0"])
def test_released_batchnorm_models_carry_the_rule_for_their_renormalised_selves(name: str) -> None:
    folder = REPO / "models" / name
    card = load_card(folder / "model_card.json")
    assert card.renormalised_abstention is not None and card.abstention is not None
    reference = Abstainer.load(folder, card, renormalised=True)  # checks the sha256
    assert reference.threshold == card.renormalised_abstention.threshold
    assert reference.means.shape == Abstainer.load(folder, card).means.shape


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "other-tool/3"}, "not a leukoscope model card"),
        ([1, 2], "not a leukoscope model card"),
        (V1_CARD | {"arch": 3}, r"arch: Input should be a valid string"),
        (V1_CARD | {"head": {"hidden": -1, "dropout": 0.3}}, "invalid head"),
        (V1_CARD | {"colour": "blue"}, "colour: Unexpected"),
        ({k: v for k, v in V1_CARD.items() if k != "classes"}, "classes: Field required"),
    ],
)
def test_a_foreign_or_broken_card_is_named_with_its_problem(
    tmp_path: Path, data: object, message: str
) -> None:
    path = _write(tmp_path / "model_card.json", data)
    with pytest.raises(LeukoscopeError, match=message) as excinfo:
        load_card(path)
    assert str(path) in str(excinfo.value)


def test_the_card_of_a_model_folder_or_its_weights_and_of_no_model(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert card_path(tmp_path) == card_path(tmp_path / "model.safetensors") == tmp_path / CARD_NAME
    # a mistyped --init-from or --teacher is named as such, not as a card beside it
    with pytest.raises(LeukoscopeError, match=r"missing: no such model file or directory"):
        card_path(tmp_path / "missing")


def test_replace_is_functional_and_validated() -> None:
    card = ModelCard("squeezenet1_1", ("a", "b"), HeadConfig(), PRE)
    changed = card.replace(test_time_views=4)
    assert changed.test_time_views == 4 and card.test_time_views == 1
    with pytest.raises(LeukoscopeError, match="calibration"):
        card.replace(calibration={"temperature": 1.5})


def test_update_card_changes_only_the_card(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model = create_model("squeezenet1_1", 2, weights="none", head=HeadConfig(0, 0.0))
    save_model(model_dir, model, ModelCard("squeezenet1_1", ("a", "b"), HeadConfig(0, 0.0), PRE))
    weights = (model_dir / "model.safetensors").read_bytes()
    calibration = Calibration(1.5, 0.2, 0.1, 10, "val")
    assert update_card(model_dir, calibration=calibration).calibration == calibration
    assert (model_dir / "model.safetensors").read_bytes() == weights
    assert load_model(model_dir)[1].calibration == calibration


def _card_dir(path: Path, classes: tuple[str, ...] = ("a", "b"), **fields: Any) -> Path:
    path.mkdir(parents=True)
    save_card(ModelCard("squeezenet1_1", classes, HeadConfig(), PRE, **fields), path / CARD_NAME)
    return path


CALIBRATED = {
    "sha256": "ef" * 32,
    "calibration": Calibration(1.5, 0.2, 0.1, 10, "val"),
    "abstention": Abstention("msp", 0.05, 0.95, "01" * 32),
}


def test_a_fallback_is_named_by_relative_path_and_weights_and_can_be_removed(
    tmp_path: Path,
) -> None:
    fast = _card_dir(tmp_path / "models" / "fast", **CALIBRATED)
    slow = _card_dir(tmp_path / "models" / "slow", **CALIBRATED)
    card = set_fallback(fast, slow)
    assert card.fallback == Fallback("../slow", "ef" * 32)
    assert load_card(fast / CARD_NAME) == card  # written, and read back
    with pytest.raises(LeukoscopeError, match="its own fallback"):
        set_fallback(fast, fast)
    assert set_fallback(fast, None).fallback is None
    assert load_card(fast / CARD_NAME).fallback is None


@pytest.mark.parametrize(
    ("fast_fields", "slow_classes", "slow_fields", "problem"),
    [
        ({}, ("a", "b"), CALIBRATED, "flags no cell uncertain"),
        (CALIBRATED, ("b", "a"), CALIBRATED, "classes"),
        (CALIBRATED, ("a", "b"), {}, "not calibrated"),
        (
            CALIBRATED,
            ("a", "b"),
            {**CALIBRATED, "fallback": Fallback("../x", "0" * 64)},
            "of its own",
        ),
    ],
)
def test_a_fallback_that_cannot_serve_is_refused_with_the_reason(
    tmp_path: Path,
    fast_fields: dict[str, Any],
    slow_classes: tuple[str, ...],
    slow_fields: dict[str, Any],
    problem: str,
) -> None:
    fast = _card_dir(tmp_path / "fast", **fast_fields)
    slow = _card_dir(tmp_path / "slow", slow_classes, **slow_fields)
    with pytest.raises(LeukoscopeError, match=problem):
        set_fallback(fast, slow)
    assert load_card(fast / CARD_NAME).fallback is None
