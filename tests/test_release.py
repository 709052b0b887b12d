"""A run is released only when finished and small enough to ship (the whole release is
exercised through ``leukoscope release`` in tests/cli/test_train_evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukoscope.errors import LeukoscopeError
from leukoscope.release import MAX_RELEASE_BYTES, check_run, release_model


def test_an_unfinished_run_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"x")
    models = tmp_path / "models"
    with pytest.raises(LeukoscopeError, match=r"model_card\.json: missing"):
        release_model(run, tmp_path / "m.csv", "tiny", models_dir=models)
    assert not models.exists()


def test_weights_too_large_to_ship_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model_card.json").write_text("{}")
    with (tmp_path / "model.safetensors").open("wb") as f:
        f.truncate(MAX_RELEASE_BYTES + 1)
    with pytest.raises(LeukoscopeError, match="larger than 20 MB"):
        check_run(tmp_path)
