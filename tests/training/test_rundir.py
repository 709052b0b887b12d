"""The run directory's resume rules, without training anything."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.models.card import TrainingRun
from leukoscope.training.checkpoint import CHECKPOINT_NAME
from leukoscope.training.rundir import CONFIG_NAME, RunDirectory, history_csv
from leukoscope.training.state import EpochRecord

SETTINGS = TrainingRun(
    manifest="/data/manifest.csv",
    manifest_sha256="ab" * 32,
    arch="squeezenet1_1",
    weights="none",
    seed=0,
    world_size=1,
    profile={"name": "fast", "phases": [{"epochs": 1}]},
)
PIXELS = Preprocessing(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_a_new_run_records_its_settings_and_preprocessing(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    assert run.prepare(SETTINGS, PIXELS, resume=False, device="cpu") is None
    config = json.loads((tmp_path / "run" / CONFIG_NAME).read_text())
    assert config["settings"]["profile"] == {"name": "fast", "phases": [{"epochs": 1}]}
    assert config["settings"]["preprocessing"]["interpolation"] == "bilinear"
    assert run.saved_settings() == config["settings"]


@pytest.mark.parametrize(
    ("settings", "pixels", "changed"),
    [
        (replace(SETTINGS, seed=1), PIXELS, "seed"),
        (SETTINGS, replace(PIXELS, interpolation="bicubic"), "preprocessing"),
    ],
)
def test_a_run_resumes_only_with_the_same_settings_and_pixels(
    tmp_path: Path, settings: TrainingRun, pixels: Preprocessing, changed: str
) -> None:
    run = RunDirectory(tmp_path / "run")
    run.prepare(SETTINGS, PIXELS, resume=False, device="cpu")
    (tmp_path / "run" / CHECKPOINT_NAME).write_bytes(b"an epoch")
    with pytest.raises(LeukoscopeError, match="--resume"):
        run.prepare(SETTINGS, PIXELS, resume=False, device="cpu")
    with pytest.raises(LeukoscopeError, match=rf"different settings \({changed}\)"):
        run.prepare(settings, pixels, resume=True, device="cpu")


def test_history_has_one_row_per_epoch() -> None:
    record = EpochRecord(1, "head", 1.0, 0.9, 0.5, 0.4, 1e-3, 2.0)
    lines = history_csv([record, replace(record, epoch=2)]).splitlines()
    assert lines[0].startswith("epoch,phase,train_loss") and len(lines) == 3
