"""Resumable training state in one atomically replaced safetensors file, never a pickle.

Tensors (model weights, optimiser moments) are safetensors entries; everything else (epoch,
best metric, history, scheduler and grad-scaler state, optimiser hyper-parameters) is JSON in
the file's metadata. One file means one atomic rename: a crash leaves the previous checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "leukoscope-checkpoint/1"


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    """A ``torch.optim.Optimizer.state_dict()``, or None between phases."""
    state: dict[str, Any]
    """JSON-serialisable training state."""


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in checkpoint.model.items()}
    meta: dict[str, Any] = {"state": checkpoint.state}
    if checkpoint.optimizer is not None:
        other: dict[str, dict[str, Any]] = {}
        for param, entries in checkpoint.optimizer["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{param}/{name}"] = value.detach().cpu().contiguous()
                else:
                    other.setdefault(str(param), {})[name] = value
        meta["optimizer"] = {"param_groups": checkpoint.optimizer["param_groups"], "other": other}
    data = safetensors.torch.save(
        tensors, metadata={"format": FORMAT, "json": json.dumps(meta, sort_keys=True)}
    )
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        meta = json.loads(metadata["json"])
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise LeukoscopeError(f"{path}: unreadable checkpoint ({exc})") from exc
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    if "optimizer" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, param, name = key.split("/", 2)
                state.setdefault(int(param), {})[name] = value
        for param, entries in meta["optimizer"]["other"].items():
            state.setdefault(int(param), {}).update(entries)
        optimizer = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    return Checkpoint(model=model, optimizer=optimizer, state=meta["state"])
