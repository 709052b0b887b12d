"""The PyTorch side of prediction: the network taking uint8 pixels, as exports run it.

Images travel as uint8 RGB pixels made by :mod:`leukoscope.data.preprocess` from the model
card's ``preprocessing`` (N, H, W, 3): a quarter of the bytes of normalised floats between
decoding workers and the model, and the same input for every backend. Normalisation happens
inside the model (:class:`PixelModel`), so an exported ONNX file is self-contained. The
predictor loads this module only for the torch backend and for explanations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from leukoscope.data.preprocess import standardise, to_unit
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.runtime import VIEW_COUNTS, ModelFn
from leukoscope.models import ModelCard, TransferModel


class PixelModel(nn.Module):
    """A classifier taking uint8 RGB pixels (N, H, W, 3) at its input size, returning
    ``(logits, pooled features)``.

    It normalises with :func:`~leukoscope.data.preprocess.to_unit` and
    :func:`~leukoscope.data.preprocess.standardise`, the functions training normalises with,
    so the ONNX export and the torch backend see bit for bit the tensor training saw.

    With ``views`` 4 or 8 it averages the logits and features of the image turned by 0, 90, 180
    and 270 degrees (and, with 8, of its mirror image turned the same ways): a cell on a slide
    has no up or left, training augments with exactly these turns, and the average of the views
    errs less than any one of them. It costs ``views`` times the computation.
    """

    mean: torch.Tensor
    """Per-channel mean, shaped (1, 3, 1, 1) (a buffer, so it travels with the model)."""
    std: torch.Tensor

    def __init__(
        self, model: TransferModel, mean: Sequence[float], std: Sequence[float], views: int = 1
    ) -> None:
        super().__init__()
        if views not in VIEW_COUNTS:
            raise LeukoscopeError(f"{views} test-time views: use one of {VIEW_COUNTS}")
        self.model = model
        self.views = views
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def from_card(cls, model: TransferModel, card: ModelCard) -> PixelModel:
        """The pixel model a model card describes (normalisation, and the test-time views
        the network computes itself: :attr:`~leukoscope.models.card.ModelCard.graph_views`)."""
        preprocessing = card.preprocessing
        return cls(model, preprocessing.mean, preprocessing.std, card.graph_views).eval()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """The float, normalised NCHW tensor the backbone expects."""
        return standardise(to_unit(pixels.permute(0, 3, 1, 2)), self.mean, self.std)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalise(pixels)
        if self.views > 1:
            x = torch.cat(symmetric_views(x, self.views))
        features = self.model.forward_features(x)
        logits = self.model.head.classifier(features)
        if self.views > 1:
            logits = logits.unflatten(0, (self.views, -1)).mean(0)
            features = features.unflatten(0, (self.views, -1)).mean(0)
        return logits, features


def symmetric_views(
    x: torch.Tensor, views: int, dims: tuple[int, int] = (2, 3)
) -> list[torch.Tensor]:
    """The first ``views`` of: square images turned by 0, 90, 180 and 270 degrees, then their
    mirror images turned the same (``torch.rot90`` in ops that export to ONNX). ``dims`` are
    the images' row and column axes (NCHW by default)."""
    rows, columns = dims
    turned = []
    for image in (x, x.flip(columns)) if views > 4 else (x,):
        transposed = image.transpose(rows, columns)
        turned += [image, transposed.flip(rows), image.flip(dims), transposed.flip(columns)]
    return turned[:views]


def torch_runner(model: PixelModel) -> ModelFn:
    """Run the PyTorch model eagerly, without autograd."""

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features = model(torch.from_numpy(pixels))
        return logits.numpy(), features.numpy()

    return run
