from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from leukoscope.errors import LeukoscopeError
from leukoscope.training.optim import (
    FINAL_LR_FACTOR,
    WARMUP_START_FACTOR,
    build_optimizer,
    build_scheduler,
    class_weights,
)
from leukoscope.training.profiles import PROFILES, Phase, get_profile


def test_lower_blocks_learn_geometrically_slower_and_biases_are_not_decayed() -> None:
    head, top, below = nn.Linear(4, 2), nn.Conv2d(3, 4, 3), nn.Conv2d(3, 3, 3)
    phase = Phase("finetune", epochs=2, lr=1e-3, trainable_stages=2, stage_lr_decay=0.5)
    optimizer = build_optimizer([head, top, below], phase, weight_decay=0.05)
    by_param = {
        id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]
    }
    assert by_param[id(head.weight)] == (1e-3, 0.05)
    assert by_param[id(head.bias)] == (1e-3, 0.0)
    assert by_param[id(top.weight)] == (5e-4, 0.05)
    assert by_param[id(below.weight)] == (2.5e-4, 0.05)
    assert by_param[id(below.bias)] == (2.5e-4, 0.0)


def test_schedule_warms_up_linearly_then_decays_by_cosine() -> None:
    layer = nn.Linear(2, 2)
    phase = Phase("head", epochs=4, lr=1.0, trainable_stages=0, warmup_epochs=1)
    optimizer = build_optimizer([layer], phase, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, phase, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(WARMUP_START_FACTOR)
    assert np.all(np.diff(lrs[:11]) > 0)
    assert lrs[10] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[10:]) < 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(FINAL_LR_FACTOR)


def test_class_weights_balance_the_classes() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 2.0]))


def test_profiles_are_data_and_unknown_names_are_explained() -> None:
    assert get_profile("fast") is PROFILES["fast"]
    assert PROFILES["fast"].cached_views > 0 and PROFILES["full"].cached_views == 0
    assert PROFILES["full"].phases[-1].trainable_stages is None
    known = "fast, fast-robust, full, full-robust, robust-finetune, gray-finetune"
    with pytest.raises(LeukoscopeError, match=known):
        get_profile("turbo")
