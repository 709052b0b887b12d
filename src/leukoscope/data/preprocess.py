"""Every step from a decoded cell image to the tensor a model sees, in one place.

Training, evaluation, prediction, ONNX export and the web service all turn an image into model
input through this module, so that a model is used exactly as it was trained. Like timm's
``resolve_data_config`` -> ``create_transform``, a typed :class:`Preprocessing` (the model
card's ``preprocessing`` section, or the registry's defaults for a new training run) drives it:

1. :func:`to_pixels`: the decoded image, re-framed around its white cell when the model was
   trained so (:class:`Framing`: :mod:`leukoscope.cells.locate` finds the cell and crops a
   square in which its diameter is a fixed fraction of the side, whatever the source's
   magnification and crop), (large JPEGs drafted down to :attr:`Preprocessing.
   draft_size` while decoding) as an RGB uint8 array, resized to the square input size with
   Pillow's antialiased ``interpolation``. The result (H, W, 3) is what the prediction loaders
   hand to the model and what the training cache stores (transposed to C, H, W): a quarter of
   the bytes of floats. Any step on the full-resolution image belongs before the resize in
   :func:`to_pixels`, the one function all of them call.
2. :func:`to_unit` then :func:`standardise`: ``x / 255``, then ``(x - mean) / std`` per channel.
   The predictor's :class:`~leukoscope.inference.predictor.PixelModel` (and so every ONNX
   export) runs these very functions inside the graph; training runs them in
   :func:`create_transform`, with the augmentation between the two. The same float operations
   in the same order give bit-identical inputs (torchvision's ``ToDtype(scale=True)`` multiplies
   by 1/255 instead and differs by one unit in the last place).

Why resize the whole crop to a square instead of cropping: PBC crops are nearly square with the
cell centred, so the aspect change is under 2% and no part of the cell is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from leukoscope.cells.locate import DEFAULT_CELL_FRACTION, NoCell, PadMode, frame_cell, locate_cell
from leukoscope.data.augment import (
    ChannelGain,
    HEDJitter,
    RandomGamma,
    RandomNoise,
    RandomRot90,
    RandomScale,
)
from leukoscope.data.datasets import CellImageDataset, Sample

Interpolation = Literal["bilinear", "bicubic"]
"""Resampling filters a model may be trained with (Pillow's, antialiased when shrinking)."""

RESAMPLE: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Framing:
    """Re-frame each image around its white cell before the resize.

    Other labs crop tighter than PBC: the cell's diameter is about 0.5 (cellavision) and 0.6
    (tecom) of the image side against about 0.37 in PBC (``benchmarks/locate.py``). Framing
    makes the cell's diameter ``cell_fraction`` of the frame whatever the source. It also
    removes the absolute cell size as a cue (in PBC monocytes fill 0.46 of the frame and
    lymphocytes 0.30), so a model must be trained with the framing it is used with, and even
    then lymphocytes and monocytes are harder to tell apart (docs/results.md, "Other labs'
    images").

    Parameters
    ----------
    cell_fraction
        Cell diameter / frame side (PBC's median by default, so PBC crops change little).
    pad
        How the frame is filled beyond the image (see :func:`~leukoscope.cells.locate.frame_cell`).
    """

    cell_fraction: float = DEFAULT_CELL_FRACTION
    pad: PadMode = "border"


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from a decoded image: the model card's ``preprocessing``.

    Parameters
    ----------
    input_size
        Side of the square input, in pixels.
    mean, std
        Per-channel normalisation of ``x / 255`` (RGB order) that the backbone's weights expect.
    interpolation
        Resampling filter of the resize.
    framing
        Cell framing before the resize; None uses the whole image as it is.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"
    framing: Framing | None = None

    @property
    def draft_size(self) -> int:
        """Smallest side a JPEG may be scaled down to while decoding: twice the input size.

        Large tiles decode several times faster, and the resize that follows still sees the
        detail training saw. Drafting down to the input size itself does not: on PBC crops at
        128 px it cost 3 of 1,227 validation images (98.94% accuracy instead of 99.19%).
        """
        return 2 * self.input_size


def resize(rgb: np.ndarray, size: int, interpolation: Interpolation = "bilinear") -> np.ndarray:
    """An RGB uint8 array (H, W, 3) resized to ``size`` x ``size`` with Pillow's antialiased
    ``interpolation``.

    >>> resize(np.zeros((10, 20, 3), np.uint8), 4).shape
    (4, 4, 3)
    """
    image = Image.fromarray(rgb)
    return np.asarray(image.resize((size, size), RESAMPLE[interpolation]))


def frame(rgb: np.ndarray, framing: Framing) -> tuple[np.ndarray, str | None]:
    """``rgb`` framed around its white cell, or unchanged with the reason no cell was found.

    An image without a credible cell is still classified, as it is, but the reason goes with
    its prediction and flags it uncertain: never a silent guess.
    """
    location = locate_cell(rgb)
    if isinstance(location, NoCell):
        return rgb, f"no white cell found for framing: {location.reason}"
    return frame_cell(rgb, location, framing.cell_fraction, framing.pad), None


def to_noted_pixels(image: Image.Image, config: Preprocessing) -> tuple[np.ndarray, str | None]:
    """A decoded image as the model's uint8 input pixels (H, W, 3), with a note when the
    preprocessing could not do what the model expects (no cell found for its framing).

    Parameters
    ----------
    image
        A decoded image of any size and mode (see :func:`~leukoscope.data.images.decode_rgb`).
    config
        The model's preprocessing.

    Returns
    -------
    tuple of numpy.ndarray and str or None
        uint8 array of shape (input_size, input_size, 3), and the note or None.
    """
    rgb = np.asarray(image.convert("RGB"))
    note = None
    if config.framing is not None:
        rgb, note = frame(rgb, config.framing)
    return resize(rgb, config.input_size, config.interpolation), note


def to_pixels(image: Image.Image, config: Preprocessing) -> np.ndarray:
    """:func:`to_noted_pixels` without the note (training, explanations)."""
    return to_noted_pixels(image, config)[0]


def pixels_dataset(samples: Sequence[Sample], config: Preprocessing) -> CellImageDataset:
    """``samples`` decoded (drafted to ``config.draft_size``) into uint8 pixel tensors
    (H, W, 3) by :func:`to_noted_pixels`, each with its note; unreadable files become error
    entries."""
    return CellImageDataset(samples, _PixelTransform(config), draft_size=config.draft_size)


@dataclass(frozen=True)
class _PixelTransform:
    """:func:`to_pixels` as a tensor; a class, not a closure, so loader workers can pickle it."""

    config: Preprocessing

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, str | None]:
        pixels, note = to_noted_pixels(image, self.config)
        return torch.from_numpy(pixels.copy()), note


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (``x / 255``), any layout."""
    return pixels.to(torch.float32) / 255.0


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with per-channel ``mean`` and ``std`` shaped to broadcast over
    ``x``'s channel axis (e.g. (1, 3, 1, 1) for NCHW, (3, 1, 1) for CHW)."""
    return (x - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Training-time randomness: a random dihedral view (a cell has no up or left), then each
    of these in the order a lab's acquisition applies them, at the given strength (0 turns one
    off): the cell's size in the frame, the stain, colour, white balance, gamma, defocus, sensor
    noise and JPEG compression."""

    colour_jitter: float = 0.0
    """Brightness, contrast and saturation jitter strength (``v2.ColorJitter``)."""
    hed_sigma: float = 0.0
    """Haematoxylin/eosin/DAB stain jitter strength (see :class:`HEDJitter`)."""
    hue: float = 0.0
    """Hue jitter (``v2.ColorJitter``'s hue, at most 0.5)."""
    channel_gain: float = 0.0
    """Per-channel gain strength (see :class:`ChannelGain`)."""
    gamma: float = 0.0
    """Gamma strength (see :class:`RandomGamma`)."""
    grayscale: float = 0.0
    """Probability of a grey image."""
    scale: float = 0.0
    """Zoom strength (see :class:`RandomScale`)."""
    blur: float = 0.0
    """Largest Gaussian blur sigma in pixels, applied to half of the images (defocus)."""
    noise: float = 0.0
    """Largest standard deviation of Gaussian noise, in [0, 1] intensity units."""
    jpeg_quality: int = 100
    """Lowest JPEG quality applied to a third of the images; 100 turns it off."""


class _ToUnit(v2.Transform):
    """:func:`to_unit` as a transform step."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return to_unit(inpt)


class _Standardise(v2.Transform):
    """:func:`standardise` of a CHW image as a transform step."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return standardise(inpt, self.mean, self.std)


def create_transform(config: Preprocessing, augmentation: Augmentation | None = None) -> v2.Compose:
    """The transform from uint8 pixels (3, H, W), as :func:`to_pixels` made them, to the float
    tensor the backbone takes: for evaluation (``augmentation`` None) exactly what
    :class:`~leukoscope.inference.predictor.PixelModel` computes; for training with the random
    ``augmentation`` between scaling and normalisation (HED jitter works on [0, 1] floats).
    """
    steps: list[v2.Transform] = []
    if augmentation is not None:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    steps.append(_ToUnit())
    if augmentation is not None:
        steps += _augmentation_steps(augmentation)
    steps.append(_Standardise(config.mean, config.std))
    return v2.Compose(steps)


def _augmentation_steps(a: Augmentation) -> list[v2.Transform]:
    """The random steps of ``a`` on [0, 1] float images, in acquisition order."""
    steps: list[v2.Transform] = []
    if a.scale > 0:
        steps.append(RandomScale(a.scale))
    if a.hed_sigma > 0:
        steps.append(HEDJitter(a.hed_sigma))
    if a.colour_jitter > 0 or a.hue > 0:
        jitter = a.colour_jitter
        steps.append(
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=a.hue)
        )
    if a.channel_gain > 0:
        steps.append(ChannelGain(a.channel_gain))
    if a.gamma > 0:
        steps.append(RandomGamma(a.gamma))
    if a.grayscale > 0:
        steps.append(v2.RandomGrayscale(a.grayscale))
    if a.blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, a.blur))], p=0.5))
    if a.noise > 0:
        steps.append(RandomNoise(a.noise))
    if a.jpeg_quality < 100:
        jpeg = v2.JPEG((a.jpeg_quality, 100))
        steps += [v2.ToDtype(torch.uint8, scale=True), v2.RandomApply([jpeg], p=1 / 3), _ToUnit()]
    return steps
