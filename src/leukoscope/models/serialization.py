"""Trained models on disk: ``model.safetensors`` (weights only, nothing to unpickle) plus
``model_card.json`` (a :class:`~leukoscope.models.card.ModelCard`: what is needed to rebuild
and use the model, and the weights' sha256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes
from leukoscope.models.card import CARD_NAME, WEIGHTS_NAME, ModelCard, load_card, save_card
from leukoscope.models.registry import TransferModel, create_model


def save_model(out_dir: str | Path, model: TransferModel, card: ModelCard) -> Path:
    """Write the weights, then the card with their sha256, each atomically; return the weights
    path. A crash between the two leaves a card whose sha256 no longer matches, never a silent
    mix of old and new."""
    data = _weights_bytes(model)
    out = Path(out_dir)
    weights_path = out / WEIGHTS_NAME
    atomic_write_bytes(weights_path, data)
    save_card(card.replace(sha256=hashlib.sha256(data).hexdigest()), out / CARD_NAME)
    return weights_path


def _weights_bytes(model: TransferModel) -> bytes:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    return safetensors.torch.save(state)


def weights_sha256(model: TransferModel) -> str:
    """The sha256 :func:`save_model` would record for ``model``: for a model kept in memory."""
    return hashlib.sha256(_weights_bytes(model)).hexdigest()


def load_model(path: str | Path) -> tuple[TransferModel, ModelCard]:
    """Load a model saved by :func:`save_model` from its directory or its .safetensors file;
    return it in eval mode with its card."""
    given = Path(path)
    if not given.exists():
        raise LeukoscopeError(f"{given}: no such model file or directory")
    weights_path = given / WEIGHTS_NAME if given.is_dir() else given
    card_path = weights_path.with_name(CARD_NAME)
    card = load_card(card_path)
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise LeukoscopeError(f"{weights_path}: cannot read model weights ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != card.sha256:
        raise LeukoscopeError(
            f"{weights_path}: sha256 does not match {card_path.name}; the file is corrupt or "
            "was changed after saving"
        )
    try:
        state = safetensors.torch.load(data)
        model = create_model(card.arch, len(card.classes), weights="none", head=card.head)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, TypeError) as exc:
        raise LeukoscopeError(f"{weights_path}: does not fit its model card ({exc})") from exc
    return model.eval(), card
