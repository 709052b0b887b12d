"""Where a training run stands: the typed state every checkpoint carries.

``--resume`` must continue a run exactly where it stopped, so everything the loop decides on
(phase, epoch, early-stopping count, best epoch so far, scheduler and grad-scaler state) lives
in one :class:`TrainingState` saved with each epoch's weights, never in local variables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from leukoscope.models.card import BestEpoch


@dataclass(frozen=True)
class EpochRecord:
    """One row of ``history.csv``."""

    epoch: int
    phase: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float


@dataclass
class TrainingState:
    """The resumable state of a run; JSON in the checkpoint (see :meth:`to_json`).

    Parameters
    ----------
    phase
        Index of the profile phase being trained (the number of phases once finished).
    phase_epoch
        Epochs done in that phase.
    epoch
        Epochs done in the whole run.
    best
        The epoch with the best validation macro-F1 so far, whose weights are saved.
    since_best
        Epochs of this phase since it improved (early stopping).
    history
        Every epoch so far.
    finished
        All phases are done.
    wall_seconds
        Wall time of the run over all the invocations that resumed it.
    scheduler, scaler
        ``state_dict()`` of the learning-rate scheduler and grad scaler of the current phase
        (None between phases).
    """

    phase: int = 0
    phase_epoch: int = 0
    epoch: int = 0
    best: BestEpoch | None = None
    since_best: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    finished: bool = False
    wall_seconds: float = 0.0
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """As checkpoints store it (the same keys as the untyped dict of earlier versions, so
        their checkpoints still resume)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        """The state a checkpoint stored (see :meth:`to_json`)."""
        best = data.get("best")
        return cls(
            phase=data["phase"],
            phase_epoch=data["phase_epoch"],
            epoch=data["epoch"],
            best=BestEpoch(**best) if best else None,
            since_best=data["since_best"],
            history=[EpochRecord(**row) for row in data["history"]],
            finished=data["finished"],
            wall_seconds=data["wall_seconds"],
            scheduler=data.get("scheduler"),
            scaler=data.get("scaler"),
        )
