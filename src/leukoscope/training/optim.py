"""Optimiser, learning-rate schedule and loss for one phase.

Lower stages hold generic ImageNet features that should move little, so each stage further
down learns at a geometrically smaller rate (layer-wise decay). Biases and normalisation
parameters get no weight decay, as is standard for AdamW.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from leukoscope.training.profiles import Phase

WARMUP_START_FACTOR = 0.01
FINAL_LR_FACTOR = 0.01


def param_groups(
    blocks: Sequence[nn.Module], phase: Phase, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups for ``blocks`` (top first): block ``d`` learns at ``lr * decay**d``."""
    groups: list[dict[str, Any]] = []
    for depth, block in enumerate(blocks):
        lr = phase.lr * phase.stage_lr_decay**depth
        params = [p for p in block.parameters() if p.requires_grad]
        decayed = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": group, "lr": lr, "weight_decay": wd}
            for group, wd in ((decayed, weight_decay), (plain, 0.0))
            if group
        ]
    return groups


def build_optimizer(
    blocks: Sequence[nn.Module], phase: Phase, weight_decay: float
) -> torch.optim.Optimizer:
    return AdamW(param_groups(blocks, phase, weight_decay))


def build_scheduler(
    optimizer: torch.optim.Optimizer, phase: Phase, steps_per_epoch: int
) -> LRScheduler:
    """Linear warm-up from 1% of each group's rate, then cosine decay to 1% of it; stepped once
    per optimiser step over the phase's planned epochs."""
    total = max(2, phase.epochs * steps_per_epoch)
    warmup = min(max(1, round(phase.warmup_epochs * steps_per_epoch)), total - 1)
    eta_min = min(g["lr"] for g in optimizer.param_groups) * FINAL_LR_FACTOR
    return SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=eta_min),
        ],
        milestones=[warmup],
    )


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * n_c)``: every class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)
