"""ImageNet weights: the SqueezeNet port against Keras, EfficientNet-Lite0 on a real photo,
offline errors and the safetensors cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.error import URLError

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from leukoscope.errors import LeukoscopeError
from leukoscope.models import create_model, get_config, weights

CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68])
FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]


@pytest.fixture(scope="module")
def keras_squeezenet(squeezenet_h5: Path) -> Any:
    """SqueezeNet 1.1 notop as the Keras reference defines it, in float64, with the h5 weights
    loaded by layer name (Keras 3 forbids '/' in layer names, so 'fire2/squeeze1x1' is
    'fire2_squeeze1x1' here)."""
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch", "keras was imported earlier with another backend"
    layers = keras.layers
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        inputs = keras.Input((None, None, 3))
        x = layers.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inputs)
        x = layers.MaxPooling2D(3, strides=2)(x)
        for fire, (squeeze, expand) in enumerate(FIRES, start=2):
            s = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{fire}_squeeze1x1")(x)
            e1 = layers.Conv2D(expand, 1, activation="relu", name=f"fire{fire}_expand1x1")(s)
            e3 = layers.Conv2D(
                expand, 3, padding="same", activation="relu", name=f"fire{fire}_expand3x3"
            )(s)
            x = layers.Concatenate()([e1, e3])
            if fire in (3, 5):
                x = layers.MaxPooling2D(3, strides=2)(x)
        model = keras.Model(inputs, x)
    finally:
        keras.config.set_floatx(floatx)
    with h5py.File(squeezenet_h5, "r") as h5:
        for layer in model.layers:
            if layer.weights:
                group = h5[layer.name.replace("_", "/", 1)]
                layer.set_weights([group[name][()] for name in group.attrs["weight_names"]])
    return model


@pytest.mark.parametrize("size", [224, 227])
def test_squeezenet_port_matches_keras(
    keras_squeezenet: Any, squeezenet_h5: Path, size: int
) -> None:
    """Exact in float64 (float32 differs by ~1e-6 relative from summation order alone). 227 is a
    size where torchvision's ceil-mode pooling would give 14x14 instead of Keras' 13x13."""
    config = get_config("squeezenet1_1")
    model = create_model("squeezenet1_1", 2, weights_file=squeezenet_h5).eval().double()
    rgb = torch.rand(
        2, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64
    )
    mean = torch.tensor(config.mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(3, 1, 1)
    bgr_caffe = rgb.permute(0, 2, 3, 1).flip(-1).numpy() * 255 - CAFFE_BGR_MEAN

    expected = np.asarray(keras_squeezenet(bgr_caffe).detach().cpu())
    with torch.no_grad():
        actual = model.backbone((rgb - mean) / std).permute(0, 2, 3, 1).numpy()

    assert actual.shape == expected.shape == (2, 13, 13, 512)
    assert np.abs(actual - expected).max() < 1e-4


def test_squeezenet_h5_with_wrong_sha256_is_refused(squeezenet_h5: Path, tmp_path: Path) -> None:
    bad = tmp_path / "squeezenet.h5"
    shutil.copyfile(squeezenet_h5, bad)
    with open(bad, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x01")
    with pytest.raises(LeukoscopeError, match="sha256") as excinfo:
        create_model("squeezenet1_1", 2, weights_file=bad)
    assert str(bad) in str(excinfo.value)


def test_squeezenet_h5_found_through_env_dir(
    squeezenet_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(squeezenet_h5, folder / weights.SQUEEZENET_H5_NAMES[0])
    monkeypatch.setenv("LEUKOSCOPE_WEIGHTS_DIR", str(folder))
    assert weights.squeezenet_h5_dirs()[0] == folder
    create_model("squeezenet1_1", 2)
    sidecar = json.loads(weights.cache_paths("squeezenet1_1")[1].read_text())
    assert str(folder) in sidecar["source"]


def test_repository_weights_dir_is_found() -> None:
    repo_dir = weights.squeezenet_h5_dirs()[-1].resolve()
    assert repo_dir == (Path(__file__).resolve().parents[3] / "shared" / "weights")


def test_squeezenet_offline_without_h5_names_alternatives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(weights, "squeezenet_h5_dirs", lambda: [tmp_path])
    with pytest.raises(LeukoscopeError) as excinfo:
        create_model("squeezenet1_1", 2)
    message = str(excinfo.value)
    for hint in ("LEUKOSCOPE_WEIGHTS_DIR", "--weights-file", "--weights none", "network disabled"):
        assert hint in message


@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_torchvision_offline_names_alternatives(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(LeukoscopeError) as excinfo:
        create_model(arch, 2)
    message = str(excinfo.value)
    assert "--weights-file" in message
    assert "--weights none" in message
    assert "name resolution" in message


def test_efficientnet_lite0_classifies_chelsea_as_egyptian_cat() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    config = get_config("efficientnet_lite0")
    transform = T.Compose(
        [
            T.ToImage(),
            T.Resize(config.input_size, interpolation=InterpolationMode(config.interpolation)),
            T.CenterCrop(config.input_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(config.mean, config.std),
        ]
    )
    image = transform(Image.fromarray(skimage_data.chelsea()))[None]
    with torch.no_grad():
        probabilities = weights.efficientnet_lite0_imagenet()(image).softmax(-1)[0]
    assert probabilities.argmax().item() == 285


def test_efficientnet_lite0_backbone_gets_the_imagenet_weights() -> None:
    reference = weights.efficientnet_lite0_imagenet().state_dict()
    model = create_model("efficientnet_lite0", 3)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_cache_is_reused_and_rebuilt_when_tampered(
    monkeypatch: pytest.MonkeyPatch, squeezenet_h5: Path
) -> None:
    calls = []
    source = weights._SOURCES["squeezenet1_1"]

    def counting_source() -> tuple[weights.StateDict, str]:
        calls.append(1)
        return source()

    monkeypatch.setitem(weights._SOURCES, "squeezenet1_1", counting_source)
    first = weights.imagenet_state_dict("squeezenet1_1")
    data_path, meta_path = weights.cache_paths("squeezenet1_1")
    meta = json.loads(meta_path.read_text())
    assert meta["sha256"] == weights.sha256_file(data_path)
    assert meta["source"]

    second = weights.imagenet_state_dict("squeezenet1_1")
    assert len(calls) == 1
    assert all(torch.equal(first[key], second[key]) for key in first)

    data = bytearray(data_path.read_bytes())
    data[-1] ^= 0xFF
    data_path.write_bytes(bytes(data))
    rebuilt = weights.imagenet_state_dict("squeezenet1_1")
    assert len(calls) == 2
    assert all(torch.equal(first[key], rebuilt[key]) for key in first)
    assert json.loads(meta_path.read_text())["sha256"] == weights.sha256_file(data_path)


def test_weights_file_of_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LeukoscopeError, match=r"must be \.safetensors"):
        create_model("resnet50", 2, weights_file=tmp_path / "resnet50.pth")
