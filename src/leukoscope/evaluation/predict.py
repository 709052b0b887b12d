"""Model predictions over image files, preprocessed exactly as the model card says."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.data.datasets import CellImageDataset, Sample, eval_transform, make_loader


@dataclass
class Predictions:
    """Predictions for the readable samples; unreadable ones are listed in ``skipped``."""

    y_true: np.ndarray
    y_pred: np.ndarray
    probabilities: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)


@torch.no_grad()
def predict_samples(
    model: nn.Module,
    card: dict[str, Any],
    samples: Sequence[Sample],
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    advance: Callable[[int], None] = lambda n: None,
) -> Predictions:
    """Run ``model`` over ``samples`` in batches; bad images are skipped with their reason."""
    model.eval().to(device)
    transform = eval_transform(card["input_size"], card["mean"], card["std"])
    loader = make_loader(
        CellImageDataset(samples, transform), batch_size=batch_size, workers=workers
    )
    truth: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    for batch in loader:
        skipped += [{"path": str(samples[i].path), "reason": msg} for i, msg in batch.errors]
        if len(batch.indices):
            with torch.autocast("cuda", enabled=device.type == "cuda"):
                logits = model(batch.images.to(device))
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
            truth.append(batch.labels.numpy())
        advance(len(batch.indices) + len(batch.errors))
    probabilities = np.concatenate(probs) if probs else np.empty((0, len(card["classes"])))
    return Predictions(
        y_true=np.concatenate(truth) if truth else np.empty(0, dtype=np.int64),
        y_pred=probabilities.argmax(1),
        probabilities=probabilities,
        skipped=skipped,
    )
