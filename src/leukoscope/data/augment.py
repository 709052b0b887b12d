"""Augmentation steps for stained blood-cell crops (composed by
:func:`leukoscope.data.preprocess.create_transform`).

A cell has no canonical orientation, so all eight flips/quarter-turns are equally valid views.
Colour varies with the stain batch and the microscope, which HED jitter models directly: it
perturbs the haematoxylin, eosin and DAB optical densities (Tellez et al., 2018) instead of
hue, which would turn a purple nucleus green.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2

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
