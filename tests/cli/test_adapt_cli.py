"""``leukoscope adapt``, in process, then ``predict`` with the adapted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoscope.cli.app import app
from leukoscope.errors import LeukoscopeError
from leukoscope.models import load_card
from tests.inference.tiny import Tiny, tiny_or_skip
from tests.training.test_adapt import new_lab_cells, save_batchnorm_model, unlabelled_cells


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny_or_skip(tmp_path_factory)


def test_adapt_then_predict(tmp_path: Path, tiny: Tiny) -> None:
    lab = new_lab_cells(tmp_path / "lab", per_class=2)
    out = tmp_path / "adapted"
    args = ["adapt", "--model", tiny.model_dir, "--data", lab, "--out", out, "--steps", "3"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.png" in result.output
    assert "6 cells" in result.output and "in-sample" in result.output
    card = load_card(out / "model_card.json")
    assert card.adaptation is not None and card.adaptation.steps == 3
    assert (
        card.calibration.temperature
        == load_card(tiny.model_dir / "model_card.json").calibration.temperature
    )
    predictions = tmp_path / "p.json"
    images = lab / "eosinophil"
    result = CliRunner().invoke(
        app, ["predict", "--model", str(out), str(images), "--out", str(predictions)]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(predictions.read_text())
    assert written["calibrated"] and written["summary"]["images"] == 2


def test_adapt_unlabelled(tmp_path: Path, tiny: Tiny) -> None:
    lab = unlabelled_cells(tmp_path / "lab", 32)
    model = save_batchnorm_model(tmp_path / "bn").parent
    out = tmp_path / "renormalised"
    args = ["adapt", "--model", model, "--data", lab, "--out", out, "--unlabelled"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "32 unlabelled cells" in result.output and "broken.png" in result.output
    assert load_card(out / "model_card.json").adaptation.renormalised == 32

    # A model without BatchNorm (the SqueezeNets) says why, and nothing is written.
    args[2], args[6] = tiny.model_dir, tmp_path / "squeezenet"
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, LeukoscopeError)  # `main` prints it and exits 1
    assert "no BatchNorm layers" in str(result.exception)
    assert not (tmp_path / "squeezenet").exists()


def test_the_command_defaults_are_the_recipe_defaults() -> None:
    """The command keeps its own defaults (importing the recipe would import torch at
    start-up); they must stay the recipe's."""
    import inspect

    from leukoscope.cli.adapt import adapt_command as command
    from leukoscope.training.adapt import AdaptOptions

    defaults = {name: p.default for name, p in inspect.signature(command).parameters.items()}
    recipe = AdaptOptions()
    for name in ("steps", "trainable_stages", "folds", "seed"):
        assert defaults[name] == getattr(recipe, name), name
