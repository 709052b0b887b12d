"""Transfer-learning models: the backbone registry, ImageNet weights and saved models."""

from leukoscope.models.card import ModelCard, load_card, save_card, update_card
from leukoscope.models.registry import (
    HeadConfig,
    ModelConfig,
    TransferModel,
    create_model,
    get_config,
    list_archs,
)
from leukoscope.models.serialization import load_model, save_model

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
