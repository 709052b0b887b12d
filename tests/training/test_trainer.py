from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import sha256_file
from leukoscope.models import load_model
from leukoscope.models.card import load_card, save_card
from leukoscope.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from leukoscope.training.rundir import HISTORY_COLUMNS
from leukoscope.training.trainer import EpochRecord, train
from tests.training.conftest import CLASSES, tiny_train_args, train_config, write_dataset


class Interrupt(Exception):
    """Stands in for a crash or Ctrl-C at the end of an epoch."""


def _without_seconds(history: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load((run_dir / "model.safetensors").read_bytes())


def test_run_directory_holds_config_log_history_checkpoint_and_best_model(
    tmp_path: Path,
) -> None:
    manifest = write_dataset(tmp_path / "data", per_class=8)
    bad = tmp_path / "data" / "images" / "lymphocyte" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with manifest.open("a", encoding="utf-8") as handle:
        handle.write(f"images/lymphocyte/broken.jpg,lymphocyte,train,{'0' * 64}\n")

    result = train(train_config(manifest, tmp_path / "run", epochs=2))

    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "train.log",
        "history.csv",
        CHECKPOINT_NAME,
        "model.safetensors",
        "model_card.json",
    }
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["arch"] == "squeezenet1_1"
    assert config["settings"]["profile"]["image_size"] == 48
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["phase"] for r in rows} == {"head", "finetune"}
    assert sum(r["phase"] == "finetune" for r in rows) == 2
    log = (run / "train.log").read_text()
    assert "broken.jpg" in log and "skipped" in log
    assert [path for path, _ in result.skipped] == [str(bad)]

    model, card = load_model(run)
    assert card.classes == tuple(CLASSES)
    assert card.preprocessing.input_size == 48 and card.arch == "squeezenet1_1"
    scale = card.preprocessing.sample_scale  # the training cells' size, measured on them
    assert scale is not None and scale.cells > 0 and 0.1 < scale.cell_fraction < 1
    assert card.validation is not None and asdict(card.validation) == result.best
    assert card.training is not None
    assert card.training.manifest_sha256 == config["settings"]["manifest_sha256"]
    best_row = rows[result.best["epoch"] - 1]
    assert float(best_row["val_macro_f1"]) == pytest.approx(result.best["val_macro_f1"])
    assert load_checkpoint(run / CHECKPOINT_NAME).state["finished"] is True
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


@pytest.mark.parametrize("profile", ["fast", "full"])
def test_resume_after_a_crash_continues_exactly_where_it_stopped(
    synthetic_manifest: Path, tmp_path: Path, profile: str
) -> None:
    config = train_config(synthetic_manifest, tmp_path / "straight", profile=profile, epochs=2)
    straight = train(config)
    first_finetune = next(r["epoch"] for r in straight.history if r["phase"] == "finetune")

    def crash_after(epoch: int):
        def callback(record: EpochRecord) -> None:
            if record.epoch == epoch:
                raise Interrupt

        return callback

    interrupted = train_config(synthetic_manifest, tmp_path / "resumed", profile=profile, epochs=2)
    for stop in (1, first_finetune):  # once inside phase 1, once inside phase 2
        with pytest.raises(Interrupt):
            train(replace(interrupted, resume=True), on_epoch_end=crash_after(stop))
        assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME).state["epoch"] == stop

    seen: list[int] = []
    resumed = train(
        replace(interrupted, resume=True),
        on_epoch_end=lambda record: seen.append(record.epoch),
    )
    assert seen[0] == first_finetune + 1
    assert _without_seconds(resumed.history) == _without_seconds(straight.history)
    assert resumed.best == straight.best
    expected, actual = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def test_existing_runs_need_resume_with_the_same_settings(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    config = train_config(synthetic_manifest, tmp_path / "run", epochs=1)
    first = train(config)
    with pytest.raises(LeukoscopeError, match="--resume"):
        train(config)
    with pytest.raises(LeukoscopeError, match=r"different settings.*seed"):
        train(replace(config, resume=True, seed=1))
    again = train(replace(config, resume=True))
    assert again.best == first.best and again.history == first.history
    # A copied run (another run's model, no checkpoint) is never trained over.
    (tmp_path / "run" / "checkpoint.safetensors").unlink()
    model = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(LeukoscopeError, match="no checkpoint"):
        train(replace(config, resume=True, seed=1))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == model


def test_pretrained_squeezenet_learns_the_synthetic_classes(
    synthetic_manifest: Path, tmp_path: Path, squeezenet_h5: Path
) -> None:
    result = train(
        train_config(
            synthetic_manifest, tmp_path / "run", weights="imagenet", image_size=64, epochs=2
        )
    )
    assert result.best["val_accuracy"] >= 0.9


def test_torchrun_ddp_on_cpu_trains_with_two_processes(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "leukoscope",
        *tiny_train_args(synthetic_manifest, out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["world_size"] == 2
    assert load_checkpoint(out / CHECKPOINT_NAME).state["finished"] is True
    load_model(out)


@pytest.mark.parametrize("failing_write", [1, 2, 3, 4, 7])
def test_a_crash_inside_a_write_leaves_only_complete_files(
    synthetic_manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing_write: int,
) -> None:
    """Kill the run while it renames the n-th output file into place (model weights, card,
    checkpoint, history, in that order per epoch): what is on disk must still load, and
    resuming must finish the run."""
    config = train_config(synthetic_manifest, tmp_path / "run", epochs=1)
    outputs = {"model.safetensors", "model_card.json", CHECKPOINT_NAME, "history.csv"}
    calls = 0
    real_replace = os.replace

    def replace_file(source: str, target: str) -> None:
        nonlocal calls
        calls += Path(target).name in outputs
        if calls == failing_write and Path(target).name in outputs:
            raise OSError("simulated power cut")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_file)
    with pytest.raises(OSError, match="power cut"):
        train(config)
    monkeypatch.setattr(os, "replace", real_replace)

    run = tmp_path / "run"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if (run / "model_card.json").exists():
        load_model(run)
    if (run / CHECKPOINT_NAME).exists():
        load_checkpoint(run / CHECKPOINT_NAME)
    finished = train(replace(config, resume=True))
    assert load_checkpoint(run / CHECKPOINT_NAME).state["finished"] is True
    assert finished.best["val_macro_f1"] > 0
    load_model(run)


def test_init_from_a_saved_model_reuses_its_weights(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    source = train(train_config(synthetic_manifest, tmp_path / "source", epochs=1, seed=1)).run_dir
    # The source resizes as the arch does not by default: the run must keep it.
    card = load_card(source / "model_card.json")
    pixels = replace(card.preprocessing, interpolation="bicubic", mean=(0.5, 0.5, 0.5))
    save_card(replace(card, preprocessing=pixels), source / "model_card.json")
    config = train_config(
        synthetic_manifest, tmp_path / "finer", image_size=64, epochs=1, init_from=source
    )
    run = train(config).run_dir
    # The fast profile never trains the stem, so it must still be the source model's.
    first = "backbone.features.0.weight"
    assert torch.equal(_weights(run)[first], _weights(source)[first])
    assert "backbone and head" in (run / "train.log").read_text()
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert settings["init_from"] == str(source)
    assert settings["init_from_sha256"] == sha256_file(source / "model.safetensors")
    trained = load_card(run / "model_card.json").preprocessing
    assert (trained.interpolation, trained.mean, trained.input_size) == ("bicubic", pixels.mean, 64)
    with pytest.raises(LeukoscopeError, match="not efficientnet_lite0"):
        train(replace(config, arch="efficientnet_lite0", out=tmp_path / "other"))
