"""Saved models: a round trip gives the same logits; damaged files are named in the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leukoscope.errors import LeukoscopeError
from leukoscope.models import (
    HeadConfig,
    ModelCard,
    create_model,
    get_config,
    load_model,
    save_model,
)
from leukoscope.models.card import FORMAT

CLASSES = ("basophil", "eosinophil", "lymphocyte")


def _card(arch: str, head: HeadConfig) -> ModelCard:
    return ModelCard(arch, CLASSES, head, get_config(arch).preprocessing(48))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    head = HeadConfig(hidden=32, dropout=0.1)
    model = create_model("squeezenet1_1", len(CLASSES), weights="none", head=head)
    save_model(tmp_path / "run", model, _card("squeezenet1_1", head))
    return tmp_path / "run", model.eval()


def test_round_trip_gives_identical_logits(saved: tuple[Path, torch.nn.Module]) -> None:
    run_dir, original = saved
    x = torch.rand(2, 3, 48, 48)
    for path in (run_dir, run_dir / "model.safetensors"):
        model, card = load_model(path)
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model(x), original(x))
        assert card.classes == CLASSES
        assert len(card.sha256) == 64


def test_card_on_disk(saved: tuple[Path, torch.nn.Module]) -> None:
    run_dir, _ = saved
    card = json.loads((run_dir / "model_card.json").read_text())
    assert {"arch", "classes", "preprocessing", "head", "sha256", "format"} <= set(card)
    assert card["format"] == FORMAT
    assert card["head"] == {"hidden": 32, "dropout": 0.1}
    assert card["preprocessing"]["input_size"] == 48


def test_corrupted_weights_are_named(saved: tuple[Path, torch.nn.Module]) -> None:
    run_dir, _ = saved
    weights = run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LeukoscopeError, match="sha256") as excinfo:
        load_model(run_dir)
    assert str(weights) in str(excinfo.value)


def test_weights_not_matching_the_card_are_named(saved: tuple[Path, torch.nn.Module]) -> None:
    """A readable file with the right sha256 that is not a model of the card's shape."""
    run_dir, _ = saved
    card_path = run_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card["classes"] = [*CLASSES, "monocyte"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(LeukoscopeError, match="does not fit") as excinfo:
        load_model(run_dir)
    assert "model.safetensors" in str(excinfo.value)


@pytest.mark.parametrize("missing", ["model.safetensors", "model_card.json"])
def test_missing_files_are_named(saved: tuple[Path, torch.nn.Module], missing: str) -> None:
    run_dir, _ = saved
    (run_dir / missing).unlink()
    with pytest.raises(LeukoscopeError, match=missing.replace(".", r"\.")):
        load_model(run_dir)


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(LeukoscopeError, match="no such model"):
        load_model(tmp_path / "nothing")


def test_a_card_records_the_models_real_head() -> None:
    head = HeadConfig(hidden=0, dropout=0.2)
    model = create_model("squeezenet1_1", 2, weights="none", head=head)
    assert model.head_config == head
