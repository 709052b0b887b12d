"""A transfer model as one flat chain of layers, cut between a frozen and a trainable part.

Every registry backbone runs its top-level children in order (nested ``nn.Sequential``s are
flattened), followed by the head's pooling and classifier. Cutting the chain just before the
lowest trainable stage lets the frozen part run once (under ``no_grad``, or once ever when its
output is cached) while only the part above it trains.
"""

from __future__ import annotations

import torch
from torch import nn

from leukoscope.errors import LeukoscopeError
from leukoscope.models.registry import TransferModel


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [
        leaf
        for child in module.children()
        for leaf in (_leaves(child) if isinstance(child, nn.Sequential) else [child])
    ]


class ModelChain:
    """The model's layers in execution order, with the chain position where each stage starts."""

    def __init__(self, model: TransferModel) -> None:
        self.model = model
        self.layers: list[nn.Module] = [
            *_leaves(model.backbone),
            model.head.pool,
            model.head.classifier,
        ]
        self.stage_starts: list[int] = []
        for stage in model.stages:
            first = _leaves(stage)[0] if isinstance(stage, nn.Sequential) else stage
            position = next((i for i, m in enumerate(self.layers) if m is first), None)
            if position is None:
                raise LeukoscopeError(f"{type(stage).__name__}: stage not found in the backbone")
            self.stage_starts.append(position)

    def check(self, input_size: int) -> None:
        """Verify on one random image that the chain computes exactly what the model does."""
        self.model.eval()
        x = torch.randn(1, 3, input_size, input_size, device=self.device)
        with torch.no_grad():
            expected = self.model(x)
            actual = self.part(0, len(self.layers))(x)
        if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-4):
            raise LeukoscopeError("this backbone cannot be split into a layer chain")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def cut(self, trainable_stages: int | None) -> int:
        """Chain position of the first trainable layer when the top ``trainable_stages``
        backbone stages (None = all) and the classifier learn."""
        n = len(self.stage_starts)
        if trainable_stages is None or trainable_stages >= n:
            return self.stage_starts[0]
        if trainable_stages <= 0:
            return len(self.layers) - 1
        return self.stage_starts[n - trainable_stages]

    def part(self, start: int, stop: int) -> nn.Sequential:
        """Layers ``start:stop`` as a module sharing the model's parameters."""
        return nn.Sequential(*self.layers[start:stop])

    def trainable_blocks(self, trainable_stages: int | None) -> list[nn.Module]:
        """The blocks that learn, top first: the classifier, then stages from the top down."""
        stages = self.model.stages
        count = len(stages) if trainable_stages is None else min(trainable_stages, len(stages))
        return [self.model.head.classifier, *reversed(stages[len(stages) - count :])]
