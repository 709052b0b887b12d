"""Transfer-learning models: the backbone registry, ImageNet weights and saved models."""

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
    "ModelConfig",
    "TransferModel",
    "create_model",
    "get_config",
    "list_archs",
    "load_model",
    "save_model",
]
