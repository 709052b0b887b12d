"""Trained models on disk: ``model.safetensors`` (weights only, nothing to unpickle) plus
``model_card.json`` (what is needed to rebuild and use the model, and the weights' sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes, atomic_write_json
from leukoscope.models.registry import HeadConfig, TransferModel, create_model

FORMAT = "leukoscope-model/1"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.json"
REQUIRED_CARD_KEYS = ("arch", "classes", "input_size", "mean", "std", "head")


def save_model(out_dir: str | Path, model: TransferModel, card: dict[str, Any]) -> Path:
    """Write the weights, then the card with their sha256, each atomically; return the weights
    path. A crash between the two leaves a card whose sha256 no longer matches, never a silent
    mix of old and new."""
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    data = safetensors.torch.save(state)
    out = Path(out_dir)
    weights_path = out / WEIGHTS_NAME
    atomic_write_bytes(weights_path, data)
    full_card = {**card, "sha256": hashlib.sha256(data).hexdigest(), "format": FORMAT}
    atomic_write_json(out / CARD_NAME, full_card)
    return weights_path


def load_model(path: str | Path) -> tuple[TransferModel, dict[str, Any]]:
    """Load a model saved by :func:`save_model` from its directory or its .safetensors file;
    return it in eval mode with its card."""
    given = Path(path)
    if not given.exists():
        raise LeukoscopeError(f"{given}: no such model file or directory")
    weights_path = given / WEIGHTS_NAME if given.is_dir() else given
    card_path = weights_path.with_name(CARD_NAME)
    card = _read_card(card_path)
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise LeukoscopeError(f"{weights_path}: cannot read model weights ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != card["sha256"]:
        raise LeukoscopeError(
            f"{weights_path}: sha256 does not match {card_path.name}; the file is corrupt or "
            "was changed after saving"
        )
    try:
        state = safetensors.torch.load(data)
        model = create_model(
            card["arch"], len(card["classes"]), weights="none", head=HeadConfig(**card["head"])
        )
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, TypeError) as exc:
        raise LeukoscopeError(f"{weights_path}: does not fit its model card ({exc})") from exc
    return model.eval(), card


def _read_card(card_path: Path) -> dict[str, Any]:
    """The parsed card, checked for the keys and format this version can load."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeukoscopeError(f"{card_path}: cannot read the model card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise LeukoscopeError(f"{card_path}: not a {FORMAT} model card")
    missing = [key for key in (*REQUIRED_CARD_KEYS, "sha256") if key not in card]
    if missing:
        raise LeukoscopeError(f"{card_path}: model card lacks {', '.join(missing)}")
    return card
