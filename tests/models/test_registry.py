"""The registry: configs, model shapes, and backbones equal to the library networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from leukoscope.errors import LeukoscopeError
from leukoscope.models import HeadConfig, create_model, get_config, list_archs, weights

ARCHS = ["squeezenet1_1", "resnet50", "inception_v3", "efficientnet_lite0"]
SMALL_INPUT = {"squeezenet1_1": 48, "resnet50": 32, "inception_v3": 75, "efficientnet_lite0": 32}


def _torchvision_squeezenet(state: weights.StateDict, x: torch.Tensor) -> torch.Tensor:
    net = torchvision.models.squeezenet1_1().double()
    _load_backbone_keys(net, state)
    return net.features(x).mean((2, 3))


def _torchvision_resnet50(state: weights.StateDict, x: torch.Tensor) -> torch.Tensor:
    net = torchvision.models.resnet50().double()
    _load_backbone_keys(net, state)
    net.fc = nn.Identity()
    return net(x)


def _torchvision_inception_v3(state: weights.StateDict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's way: ImageNet-normalised input, rescaled to [-1, 1] inside the model."""
    net = torchvision.models.inception_v3(
        aux_logits=False, init_weights=False, transform_input=True
    ).double()
    _load_backbone_keys(net, state)
    net.fc = nn.Identity()
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=x.dtype).view(3, 1, 1)
    return net(((x * 0.5 + 0.5) - mean) / std)


def _timm_efficientnet_lite0(state: weights.StateDict, x: torch.Tensor) -> torch.Tensor:
    net = timm.create_model(weights.EFFICIENTNET_LITE0_TIMM).double()
    _load_backbone_keys(net, state)
    return net.forward_head(net.forward_features(x), pre_logits=True)


def _load_backbone_keys(net: nn.Module, state: weights.StateDict) -> None:
    """Load backbone weights into a full library model: only its classifier may be missing."""
    missing, unexpected = net.eval().load_state_dict(state, strict=False)
    assert not unexpected
    assert all(key.startswith(("fc.", "classifier.")) for key in missing), missing


LIBRARY_FEATURES = {
    "squeezenet1_1": _torchvision_squeezenet,
    "resnet50": _torchvision_resnet50,
    "inception_v3": _torchvision_inception_v3,
    "efficientnet_lite0": _timm_efficientnet_lite0,
}


def test_list_archs() -> None:
    assert list_archs() == ARCHS


def test_configs() -> None:
    assert [get_config(arch).input_size for arch in ARCHS] == [224, 224, 299, 224]
    squeezenet = get_config("squeezenet1_1")
    assert squeezenet.mean == pytest.approx((123.68 / 255, 116.779 / 255, 103.939 / 255))
    assert squeezenet.std == pytest.approx((1 / 255,) * 3)
    assert get_config("efficientnet_lite0").mean == (0.5, 0.5, 0.5)
    assert all(get_config(arch).arch == arch for arch in ARCHS)


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(LeukoscopeError, match="squeezenet1_1, resnet50, inception_v3"):
        get_config("vgg16")
    with pytest.raises(LeukoscopeError, match="efficientnet_lite0"):
        create_model("vgg16", 2, weights="none")


@pytest.mark.parametrize("arch", ARCHS)
def test_create_model_shapes(arch: str) -> None:
    model = create_model(arch, 5, weights="none").eval()
    size = SMALL_INPUT[arch]
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 5)
    assert features.shape == (2, model.num_features)
    first, _, _, last = model.head.classifier
    assert (first.in_features, first.out_features) == (model.num_features, 256)
    assert (last.in_features, last.out_features) == (256, 5)
    assert model.stages
    in_stages = {id(p) for stage in model.stages for p in stage.parameters()}
    assert in_stages == {id(p) for p in model.backbone.parameters()}


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_is_the_library_network(arch: str) -> None:
    """Same keys, same pooled features as the torchvision/timm network given the same weights
    (squeezenet1_1 at 224, where its floor-mode pooling agrees with torchvision's ceil mode).
    In float64: randomly initialised deep nets amplify float32 rounding too much to compare."""
    model = create_model(arch, 2, weights="none").eval().double()
    size = 224 if arch == "squeezenet1_1" else SMALL_INPUT[arch]
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = LIBRARY_FEATURES[arch](model.backbone.state_dict(), x)
        torch.testing.assert_close(model.forward_features(x), expected)


def test_plain_linear_head() -> None:
    model = create_model("squeezenet1_1", 3, weights="none", head=HeadConfig(hidden=0))
    dropout, linear = model.head.classifier
    assert isinstance(dropout, nn.Dropout)
    assert (linear.in_features, linear.out_features) == (512, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "imagenet21k"}, "unknown weights"),
        ({"weights": "none", "weights_file": "x.safetensors"}, "--weights imagenet"),
        ({"weights": "none", "head": HeadConfig()}, None),
    ],
)
def test_create_model_arguments(kwargs: dict, message: str | None) -> None:
    if message is None:
        create_model("squeezenet1_1", 2, **kwargs)
        return
    with pytest.raises(LeukoscopeError, match=message):
        create_model("squeezenet1_1", 2, **kwargs)


def test_invalid_head_config() -> None:
    with pytest.raises(LeukoscopeError, match="dropout"):
        HeadConfig(dropout=1.0)


def test_weights_file_safetensors(tmp_path: Path) -> None:
    """A library-keyed .safetensors file is used as the backbone; a wrong one is named."""
    source = create_model("squeezenet1_1", 2, weights="none")
    good = tmp_path / "squeezenet.safetensors"
    safetensors.torch.save_file(source.backbone.state_dict(), good)
    model = create_model("squeezenet1_1", 2, weights_file=good)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.backbone.state_dict()[key])

    wrong = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(LeukoscopeError, match="not squeezenet1_1 backbone weights") as excinfo:
        create_model("squeezenet1_1", 2, weights_file=wrong)
    assert str(wrong) in str(excinfo.value)

    with pytest.raises(LeukoscopeError, match=r"missing\.safetensors"):
        create_model("squeezenet1_1", 2, weights_file=tmp_path / "missing.safetensors")


def test_squeezenet_pools_like_keras_where_torchvision_differs() -> None:
    """torchvision's ceil-mode pooling gives 14x14 at 227 where Keras gives 13x13; ours follows
    Keras (see test_weights for the exact comparison)."""
    x = torch.zeros(1, 3, 227, 227)
    with torch.no_grad():
        stock = torchvision.models.squeezenet1_1().features(x)
        ours = create_model("squeezenet1_1", 2, weights="none").backbone(x)
    assert stock.shape[-2:] == (14, 14)
    assert ours.shape[-2:] == (13, 13)
