"""Augmentation steps for stained blood-cell crops (composed by
:func:`leukoscope.data.preprocess.create_transform`).

A cell has no canonical orientation, so all eight flips/quarter-turns are equally valid views.
Colour varies with the stain batch and the microscope, which HED jitter models directly: it
perturbs the haematoxylin, eosin and DAB optical densities (Tellez et al., 2018) instead of
hue, which would turn a purple nucleus green.

Other labs differ in more than the stain batch: the released models trained with only mild
jitter fell from 99% on PBC to 9-59% on two other labs' images. The other transforms here vary
what a lab's acquisition changes: the cell's size in the frame (what is left after cell
framing), white balance (a yellow or blue background tint), gamma and sensor noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from leukoscope.data.preprocess import standardise, to_unit

RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
"""Stain vectors of Ruifrok & Johnston (2001), as in ``skimage.color.rgb_from_hed``."""
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)
"""skimage's scaling of optical densities: log(1e-6), the darkest representable intensity."""


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1], shape (..., 3, H, W) -> stain densities, as ``skimage``'s rgb2hed
    but without clipping negative densities, so that :func:`hed_to_rgb` inverts it exactly."""
    density = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("...chw,cd->...dhw", density, HED_FROM_RGB)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`, as ``skimage.color.hed2rgb``; clipped to [0, 1]."""
    log_rgb = torch.einsum("...chw,cd->...dhw", hed * _LOG_ADJUST, RGB_FROM_HED)
    return torch.exp(log_rgb).clamp(0, 1)


class HEDJitter(v2.Transform):
    """Scale each stain density by U(1-s, 1+s) and shift it by U(-s, s).

    Works on float images in [0, 1]; put it after ``v2.ToDtype(torch.float32, scale=True)``.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        scale = 1 + (torch.rand(3) * 2 - 1) * self.sigma
        shift = (torch.rand(3) * 2 - 1) * self.sigma
        return {"scale": scale, "shift": shift}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError("HEDJitter needs a float image in [0, 1]")
        hed = rgb_to_hed(inpt)
        hed = hed * params["scale"][:, None, None] + params["shift"][:, None, None]
        return hed_to_rgb(hed).to(inpt.dtype)


class RandomRot90(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees, chosen uniformly (exact, no interpolation)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return torch.rot90(inpt, params["k"], dims=(-2, -1))


class RandomScale(v2.Transform):
    """Zoom a square float image by a log-uniform factor in [1/(1+s), 1+s], shifted by up to
    ``shift`` of the side, keeping its size.

    Zooming out pads with the median colour of the image's border, the slide's background, so
    no black frame tells the model that the image was augmented.
    """

    def __init__(self, strength: float, shift: float = 0.05) -> None:
        super().__init__()
        self.strength = strength
        self.shift = shift

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        bound = math.log1p(self.strength)
        factor = math.exp(float(torch.empty(()).uniform_(-bound, bound)))
        offset = (torch.rand(2) * 2 - 1) * self.shift
        return {"factor": factor, "offset": offset}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = inpt.shape[-1]
        scaled = max(1, round(size * params["factor"]))
        if scaled == size:
            return inpt
        resized = v2.functional.resize(inpt, [scaled, scaled], antialias=True)
        dy, dx = (params["offset"] * size).round().int().tolist()
        if scaled < size:
            border = torch.cat(
                [inpt[..., 0, :], inpt[..., -1, :], inpt[..., :, 0], inpt[..., :, -1]], dim=-1
            )
            out = border.median(dim=-1).values[..., None, None].expand_as(inpt).clone()
            top = min(max((size - scaled) // 2 + dy, 0), size - scaled)
            left = min(max((size - scaled) // 2 + dx, 0), size - scaled)
            out[..., top : top + scaled, left : left + scaled] = resized
            return out
        top = min(max((scaled - size) // 2 + dy, 0), scaled - size)
        left = min(max((scaled - size) // 2 + dx, 0), scaled - size)
        return resized[..., top : top + size, left : left + size]


class ChannelGain(v2.Transform):
    """Multiply each RGB channel by U(1-s, 1+s): the white balance and lamp colour of another
    microscope (a yellow background is a blue gain below 1)."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gain": 1 + (torch.rand(3) * 2 - 1) * self.strength}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return (inpt * params["gain"][:, None, None]).clamp(0, 1)


class RandomGamma(v2.Transform):
    """Raise a [0, 1] image to a log-uniform power in [exp(-s), exp(s)] (camera response)."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(float(torch.empty(()).uniform_(-self.strength, self.strength)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return inpt.clamp_min(0) ** params["gamma"]


class RandomNoise(v2.Transform):
    """Add Gaussian noise of a standard deviation drawn from U(0, s) (sensor noise)."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"sigma": float(torch.rand(())) * self.strength}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return (inpt + torch.randn_like(inpt) * params["sigma"]).clamp(0, 1)


class ToUnit(v2.Transform):
    """:func:`~leukoscope.data.preprocess.to_unit` as a transform step."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return to_unit(inpt)


class Standardise(v2.Transform):
    """:func:`~leukoscope.data.preprocess.standardise` of a CHW image as a transform step."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return standardise(inpt, self.mean, self.std)
