"""``leukoscope adapt``, in process, then ``predict`` with the adapted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoscope.cli.app import app
from leukoscope.models import load_card
from tests.inference.tiny import Tiny, tiny_or_skip
from tests.training.test_adapt import new_lab_cells


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
