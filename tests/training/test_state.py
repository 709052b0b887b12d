"""The typed training state reads the untyped state that earlier checkpoints hold."""

from __future__ import annotations

from leukoscope.models.card import BestEpoch
from leukoscope.training.state import EpochRecord, TrainingState

EARLIER_CHECKPOINT_STATE = {
    "phase": 1,
    "phase_epoch": 2,
    "epoch": 5,
    "best": {
        "epoch": 4,
        "phase": "finetune",
        "val_loss": 0.6,
        "val_accuracy": 0.95,
        "val_macro_f1": 0.94,
    },
    "since_best": 1,
    "history": [
        {
            "epoch": 5,
            "phase": "finetune",
            "train_loss": 0.7,
            "val_loss": 0.61,
            "val_accuracy": 0.94,
            "val_macro_f1": 0.93,
            "lr": 1e-4,
            "seconds": 12.5,
        }
    ],
    "finished": False,
    "wall_seconds": 300.0,
    "scheduler": {"last_epoch": 10},
    "scaler": {"scale": 1.0},
}


def test_an_earlier_checkpoint_state_resumes_unchanged() -> None:
    state = TrainingState.from_json(EARLIER_CHECKPOINT_STATE)
    assert state.best == BestEpoch(4, "finetune", 0.6, 0.95, 0.94)
    assert state.history == [EpochRecord(5, "finetune", 0.7, 0.61, 0.94, 0.93, 1e-4, 12.5)]
    assert (state.phase, state.phase_epoch, state.epoch, state.since_best) == (1, 2, 5, 1)
    assert state.to_json() == EARLIER_CHECKPOINT_STATE


def test_a_fresh_state_has_no_best_epoch() -> None:
    state = TrainingState()
    assert state.best is None and state.history == [] and not state.finished
    assert TrainingState.from_json(state.to_json()) == state
