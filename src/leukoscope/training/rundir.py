"""A training run's directory: what it holds, when it may be resumed, and writing into it.

A run directory is self-contained: ``config.json`` (the settings that determine the result),
``train.log``, ``history.csv``, ``checkpoint.safetensors`` (the last epoch, for ``--resume``)
and the best model so far (``model.safetensors`` + ``model_card.json``). Every file is replaced
atomically, so a run killed at any moment resumes from its last complete epoch. The policy here
protects results: an existing run is continued only when asked to and only with the very same
settings, and a directory holding another run's model is never trained over.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.models import ModelCard, TransferModel, save_model
from leukoscope.models.card import TrainingRun
from leukoscope.models.serialization import WEIGHTS_NAME
from leukoscope.training.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from leukoscope.training.state import EpochRecord, TrainingState

CONFIG_NAME = "config.json"
HISTORY_NAME = "history.csv"
LOG_NAME = "train.log"
CACHE_NAME = "cache"
"""Frozen-feature caches of the run, deleted when it finishes."""

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "seconds",
)


class RunDirectory:
    """One run's folder. Only the main process of a distributed run writes (``is_main``)."""

    def __init__(self, path: Path, *, is_main: bool = True) -> None:
        self.path = path
        self.is_main = is_main

    @property
    def cache(self) -> Path:
        return self.path / CACHE_NAME

    def prepare(
        self,
        settings: TrainingRun,
        preprocessing: Preprocessing,
        *,
        resume: bool,
        device: str,
    ) -> Checkpoint | None:
        """Apply the resume rules, write ``config.json``; return the checkpoint to resume from
        (None: start afresh).

        The preprocessing is compared too: it comes from the registry, not from the command
        line, so a new version of leukoscope may propose another one for the same arch, and a
        run must not change its input pixels halfway.

        Raises
        ------
        LeukoscopeError
            When the directory holds a run and ``resume`` is off, when it holds a run with
            other settings (naming them), or another run's model without a checkpoint.
        """
        current = _as_json(settings) | {"preprocessing": _as_json(preprocessing)}
        checkpoint_path = self.path / CHECKPOINT_NAME
        if checkpoint_path.exists():
            if not resume:
                raise LeukoscopeError(
                    f"{self.path} already holds a run: pass --resume to continue it, "
                    "or choose another --out"
                )
            saved = self.saved_settings() or {}
            changed = sorted(k for k in current if saved.get(k) != current[k])
            if changed:
                raise LeukoscopeError(
                    f"{self.path}: cannot resume with different settings "
                    f"({', '.join(changed)}); use another --out"
                )
            return load_checkpoint(checkpoint_path)
        if (self.path / WEIGHTS_NAME).exists() and self.saved_settings() != current:
            # Not this run stopped before its first checkpoint (that one just starts over),
            # but another model, e.g. a copied run: never train over it.
            raise LeukoscopeError(
                f"{self.path} holds a model of another run and no checkpoint to resume "
                "from; training would overwrite it: choose another --out"
            )
        if self.is_main:
            config = {"settings": current, "torch": torch.__version__, "device": device}
            atomic_write_json(self.path / CONFIG_NAME, config)
        return None

    def saved_settings(self) -> dict[str, Any] | None:
        """The settings in ``config.json``, if it can be read."""
        try:
            config = json.loads((self.path / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logging.getLogger(__name__).debug("no readable %s: %s", CONFIG_NAME, exc)
            return None
        return config.get("settings") if isinstance(config, dict) else None

    @contextmanager
    def logging_to_file(self) -> Iterator[None]:
        """Copy leukoscope's log records (INFO and up) to ``train.log`` meanwhile."""
        if not self.is_main:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.path / LOG_NAME, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("leukoscope")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()

    def save_checkpoint(
        self, model: TransferModel, optimizer: dict[str, Any] | None, state: TrainingState
    ) -> None:
        """The epoch's checkpoint, then ``history.csv``."""
        if not self.is_main:
            return
        save_checkpoint(
            self.path / CHECKPOINT_NAME, Checkpoint(model.state_dict(), optimizer, state.to_json())
        )
        atomic_write_text(self.path / HISTORY_NAME, history_csv(state.history))

    def save_best(self, model: TransferModel, card: ModelCard) -> None:
        """The best model so far with its card."""
        if self.is_main:
            save_model(self.path, model, card)

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The saved best model's weights (each phase continues from them)."""
        return safetensors.torch.load((self.path / WEIGHTS_NAME).read_bytes())

    def remove_cache(self) -> None:
        if self.is_main and self.cache.exists():
            shutil.rmtree(self.cache)


def _as_json(settings: TrainingRun | Preprocessing) -> dict[str, Any]:
    """Settings as ``config.json`` holds them (tuples become lists)."""
    result: dict[str, Any] = json.loads(json.dumps(asdict(settings)))
    return result


def history_csv(history: Sequence[EpochRecord]) -> str:
    """``history.csv``: one row per epoch."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(record) for record in history)
    return buffer.getvalue()
