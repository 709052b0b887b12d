from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from leukoscope.errors import LeukoscopeError
from leukoscope.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _trained_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_optimizer_and_json_state(tmp_path: Path) -> None:
    model, optimizer = _trained_optimizer()
    state = {"epoch": 3, "best": {"val_macro_f1": 0.5}, "history": [{"epoch": 1}]}
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), optimizer.state_dict(), state))

    loaded = load_checkpoint(path)
    assert loaded.state == state
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model[key], value)
    assert loaded.optimizer is not None
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh.load_state_dict(loaded.optimizer)
    for param in model.parameters():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fresh.state[param][name], optimizer.state[param][name])
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    # Nothing in the file is a pickle: its header is the safetensors JSON header.
    assert path.read_bytes()[8:9] == b"{"


def test_checkpoint_without_optimizer(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Checkpoint({"w": torch.ones(2)}, None, {"phase": 1}))
    loaded = load_checkpoint(path)
    assert loaded.optimizer is None and loaded.state == {"phase": 1}


def test_crash_while_writing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, Checkpoint({"w": torch.zeros(2)}, None, {"epoch": 1}))
    before = path.read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, Checkpoint({"w": torch.ones(2)}, None, {"epoch": 2}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(LeukoscopeError, match="unreadable checkpoint"):
        load_checkpoint(path)
