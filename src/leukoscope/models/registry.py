"""The supported backbones in one table, and the transfer model built on them.

Modelled on timm's registry and pretrained configs: each arch maps to a builder that returns the
library's own network cut before its classifier (so its state dict keeps torchvision/timm key
names) and to the preprocessing its ImageNet weights expect.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import timm
import torch
import torchvision
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torch import nn

from leukoscope.data.preprocess import Interpolation, Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.models.card import HeadConfig
from leukoscope.models.weights import EFFICIENTNET_LITE0_TIMM, load_imagenet_weights

WEIGHTS = ("imagenet", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Preprocessing an arch's weights expect: resize to ``input_size`` with ``interpolation``,
    scale RGB to [0, 1], then ``(x - mean) / std`` per channel (torchvision ``Normalize``).
    A new training run's card records :meth:`preprocessing`, and prediction then follows the
    card, not this table."""

    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"

    def preprocessing(self, input_size: int | None = None) -> Preprocessing:
        """These defaults as a model's preprocessing, at ``input_size`` (default: the arch's)."""
        return Preprocessing(input_size or self.input_size, self.mean, self.std, self.interpolation)


class Backbone(NamedTuple):
    """What a builder returns: the feature-map network, its blocks early -> late (together
    holding all its parameters), and its number of output channels."""

    module: nn.Module
    stages: list[nn.Module]
    num_features: int


class ClassifierHead(nn.Module):
    """Global average pooling followed by the MLP described by a :class:`HeadConfig`."""

    def __init__(self, num_features: int, num_classes: int, config: HeadConfig) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        if config.hidden:
            layers = [
                nn.Linear(num_features, config.hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden, num_classes),
            ]
        else:
            layers = [nn.Dropout(config.dropout), nn.Linear(num_features, num_classes)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(feature_map))


class TransferModel(nn.Module):
    """An ImageNet backbone with a new head. ``stages`` lists the backbone's blocks early -> late
    so a trainer can freeze it and fine-tune only the upper blocks with their own learning rates.
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: HeadConfig) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.stages = backbone.stages
        self.num_features = backbone.num_features
        self.head_config = head
        """The head's shape, which a model card must record to rebuild it."""
        self.head = ClassifierHead(backbone.num_features, num_classes, head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (N, num_features)."""
        return self.head.pool(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, num_classes)."""
        return self.head.classifier(self.forward_features(x))


def _children_except(net: nn.Module, *names: str) -> nn.Sequential:
    """The net's top-level layers in order without the named ones, keeping their key names."""
    return nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n not in names))


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _squeezenet1_1() -> Backbone:
    """torchvision's SqueezeNet 1.1, with floor-mode max pooling like the Keras port.

    torchvision (like Caffe) rounds pooled sizes up, Keras 'valid' pooling rounds down. The two
    agree when the input size is 0 or 15 mod 16 (224, 240, 255, 256...) and differ elsewhere
    (227 and 299 give 14x14 and 18x18 maps instead of 13x13 and 17x17), so the Keras rounding
    is used: the port then matches the reference Keras model at every input size.
    """
    net = torchvision.models.squeezenet1_1()
    for layer in net.features:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = False
    stages = [layer for layer in net.features if _has_parameters(layer)]
    return Backbone(_children_except(net, "classifier"), stages, net.classifier[1].in_channels)


def _resnet50() -> Backbone:
    net = torchvision.models.resnet50()
    stem = nn.Sequential(net.conv1, net.bn1)
    stages = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(_children_except(net, "avgpool", "fc"), stages, net.fc.in_features)


def _inception_v3() -> Backbone:
    """torchvision's Inception v3 without the auxiliary classifier (an ImageNet training aid).

    ``transform_input`` is off: the [-1, 1] input scaling it would apply to ImageNet-normalised
    images is done by the ModelConfig (mean = std = 0.5) instead.
    """
    net = torchvision.models.inception_v3(
        aux_logits=False, transform_input=False, init_weights=True
    )
    body = _children_except(net, "avgpool", "dropout", "fc")
    stages = [layer for layer in body if _has_parameters(layer)]
    return Backbone(body, stages, net.fc.in_features)


def _efficientnet_lite0() -> Backbone:
    """timm's EfficientNet-Lite0 returning its final feature map (no pooling, no dropout)."""
    net = timm.create_model(EFFICIENTNET_LITE0_TIMM, num_classes=0, global_pool="", drop_rate=0.0)
    # timm's modules type their attributes as Tensor | Module
    stem = nn.Sequential(cast(nn.Module, net.conv_stem), cast(nn.Module, net.bn1))
    top = nn.Sequential(cast(nn.Module, net.conv_head), cast(nn.Module, net.bn2))
    blocks = cast(nn.Sequential, net.blocks)
    return Backbone(net, [stem, *blocks, top], cast(int, net.num_features))


@dataclass(frozen=True)
class _Entry:
    build: Callable[[], Backbone]
    config: ModelConfig


_CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
"""The Caffe BGR means (103.939, 116.779, 123.68) in RGB order on the [0, 1] scale."""

_REGISTRY: dict[str, _Entry] = {
    "squeezenet1_1": _Entry(
        _squeezenet1_1, ModelConfig("squeezenet1_1", 224, _CAFFE_MEAN, (1 / 255,) * 3)
    ),
    "resnet50": _Entry(
        _resnet50, ModelConfig("resnet50", 224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    ),
    "inception_v3": _Entry(
        _inception_v3,
        ModelConfig("inception_v3", 299, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD),
    ),
    "efficientnet_lite0": _Entry(
        _efficientnet_lite0,
        ModelConfig(
            "efficientnet_lite0", 224, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, "bicubic"
        ),
    ),
}


def list_archs() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_REGISTRY)


def _entry(arch: str) -> _Entry:
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise LeukoscopeError(
            f"unknown architecture {arch!r}: choose one of {', '.join(_REGISTRY)}"
        ) from None


def get_config(arch: str) -> ModelConfig:
    """The preprocessing the arch's ImageNet weights expect."""
    return _entry(arch).config


_DEFAULT_HEAD = HeadConfig()


def create_model(
    arch: str,
    num_classes: int,
    *,
    weights: str = "imagenet",
    weights_file: str | Path | None = None,
    head: HeadConfig = _DEFAULT_HEAD,
) -> TransferModel:
    """Build ``arch`` with a ``num_classes`` head.

    ``weights="imagenet"`` loads the pretrained backbone (from ``weights_file`` when given: a
    .safetensors file with torchvision/timm key names whose weights expect this arch's
    ModelConfig, or for squeezenet1_1 the Keras .h5); ``"none"`` keeps a random initialisation.
    """
    entry = _entry(arch)
    if weights not in WEIGHTS:
        raise LeukoscopeError(f"unknown weights {weights!r}: use {' or '.join(WEIGHTS)}")
    if weights_file is not None and weights != "imagenet":
        raise LeukoscopeError("--weights-file needs --weights imagenet")
    if num_classes < 1:
        raise LeukoscopeError(f"a model needs at least one class, got {num_classes}")
    backbone = entry.build()
    if weights == "imagenet":
        load_imagenet_weights(arch, backbone.module, weights_file)
    return TransferModel(backbone, num_classes, head)
