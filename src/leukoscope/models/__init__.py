"""Transfer-learning models: the backbone registry, ImageNet weights and saved models.

The card (:mod:`leukoscope.models.card`) is imported at once; the registry and serialization
names, which import torch and timm (seconds), only when first used, so that a model served by
ONNX Runtime or OpenVINO is read without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from leukoscope.models.card import HeadConfig, ModelCard, load_card, save_card, update_card

if TYPE_CHECKING:
    from leukoscope.models.registry import (
        ModelConfig,
        TransferModel,
        create_model,
        get_config,
        list_archs,
    )
    from leukoscope.models.serialization import load_model, save_model

_LAZY = {
    "ModelConfig": "registry",
    "TransferModel": "registry",
    "create_model": "registry",
    "get_config": "registry",
    "list_archs": "registry",
    "load_model": "serialization",
    "save_model": "serialization",
}

__all__ = [
    "HeadConfig",
    "ModelCard",
    "ModelConfig",
    "TransferModel",
    "create_model",
    "get_config",
    "list_archs",
    "load_card",
    "load_model",
    "save_card",
    "save_model",
    "update_card",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
