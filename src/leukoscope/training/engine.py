"""The inner loops: one training epoch and one pass of predictions.

Both take a ``frozen`` module run under ``no_grad`` before the trainable ``top`` (an identity
when the frozen part's output is cached), and use autocast with a gradient scaler on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch
from torch import nn

Advance = Callable[[int], None]

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Advance]]
"""``progress(description, total or None)`` -> context manager yielding ``advance(n)``."""


@contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Advance]:
    """A :data:`ProgressFactory` that shows nothing."""
    yield lambda n: None


def _autocast(device: torch.device) -> torch.autocast | nullcontext[None]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def train_epoch(
    top: nn.Module,
    frozen: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    advance: Advance,
) -> tuple[float, int]:
    """Train ``top`` for one pass over ``batches``; returns (summed loss, number of images)."""
    top.train()
    frozen.eval()
    loss_sum, count = 0.0, 0
    for inputs, labels in batches:
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device):
            with torch.no_grad():
                inputs = frozen(inputs)
            loss = criterion(top(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(labels)
        count += len(labels)
        advance(1)
    return loss_sum, count


@torch.no_grad()
def predict(
    top: nn.Module,
    frozen: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted classes, true labels and mean loss over ``batches``."""
    top.eval()
    frozen.eval()
    preds: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    loss_sum = 0.0
    for inputs, labels in batches:
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device):
            logits = top(frozen(inputs))
            loss_sum += float(criterion(logits.float(), labels)) * len(labels)
        preds.append(logits.argmax(1).cpu().numpy())
        truth.append(labels.cpu().numpy())
    y_pred, y_true = np.concatenate(preds), np.concatenate(truth)
    return y_pred, y_true, loss_sum / max(1, len(y_true))
