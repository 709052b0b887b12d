"""``leukoscope train``: two-phase transfer learning into a self-contained run directory.

Phase 1 trains the new head on a frozen backbone; phase 2 also fine-tunes the backbone's upper
stages at lower, layer-wise decaying learning rates. Every epoch ends with an atomic checkpoint,
so ``--resume`` continues an interrupted run exactly where it stopped. This module is the loop;
the run directory and its resume rules are in :mod:`~leukoscope.training.rundir`, the typed
state in :mod:`~leukoscope.training.state`, decoded-image and frozen-feature caches in
:mod:`~leukoscope.training.cache` and :mod:`~leukoscope.training.features`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from leukoscope.data.datasets import read_manifest
from leukoscope.data.preprocess import (
    SCALE_REFERENCE_IMAGES,
    Preprocessing,
    SampleScale,
    create_transform,
    reference_scale,
    spread,
)
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.metrics import accuracy_and_macro_f1
from leukoscope.fileio import sha256_file
from leukoscope.models import ModelCard, TransferModel, create_model, get_config, load_model
from leukoscope.models.card import BestEpoch, TrainingRun, card_path, load_card
from leukoscope.training.cache import (
    FeatureDataset,
    ImageCache,
    ImageDataset,
    Target,
    build_image_cache,
    image_cache_key,
)
from leukoscope.training.chain import ModelChain
from leukoscope.training.checkpoint import Checkpoint
from leukoscope.training.distill import teacher_targets
from leukoscope.training.distributed import DistContext, distributed_context
from leukoscope.training.engine import ProgressFactory, no_progress, predict, train_epoch
from leukoscope.training.features import FeatureCacher, FeatureSplit
from leukoscope.training.loader import epoch_loader
from leukoscope.training.optim import build_optimizer, build_scheduler, class_weights
from leukoscope.training.profiles import Phase, Profile, get_profile
from leukoscope.training.rundir import RunDirectory
from leukoscope.training.seeding import GLOBAL, VIEW_CHOICE, derive_seed
from leukoscope.training.state import EpochRecord, TrainingState

logger = logging.getLogger(__name__)

__all__ = [
    "EpochRecord",
    "ProgressFactory",
    "TrainConfig",
    "TrainResult",
    "no_progress",
    "train",
]


@dataclass(frozen=True)
class TrainConfig:
    """What the user asked for; the profile supplies everything else."""

    manifest: Path
    arch: str
    profile: str = "fast"
    out: Path | None = None
    resume: bool = False
    epochs: int | None = None
    """Overrides the last (fine-tuning) phase's epochs."""
    image_size: int | None = None
    weights: str = "imagenet"
    weights_file: Path | None = None
    init_from: Path | None = None
    """A saved leukoscope model of the same arch to start from instead of ImageNet weights:
    its backbone, and its head too when it has the same classes (e.g. to fine-tune a model
    at another input size)."""
    seed: int = 0
    batch_size: int | None = None
    teacher: Path | None = None
    """A saved model with the same classes whose calibrated predictions the model learns from
    besides the labels (:mod:`~leukoscope.training.distill`)."""

    def effective_profile(self) -> Profile:
        """The named profile with this config's overrides applied."""
        profile = get_profile(self.profile)
        phases = profile.phases
        if self.epochs is not None:
            if self.epochs < 1:
                raise LeukoscopeError("--epochs must be at least 1")
            phases = (*phases[:-1], dataclasses.replace(phases[-1], epochs=self.epochs))
        return dataclasses.replace(
            profile,
            phases=phases,
            image_size=self.image_size or profile.image_size or get_config(self.arch).input_size,
            batch_size=self.batch_size or profile.batch_size,
        )

    def default_out(self) -> Path:
        return Path("runs") / f"{self.arch}-{self.profile}-{self.manifest.stem}-seed{self.seed}"


@dataclass
class TrainResult:
    run_dir: Path
    best: dict[str, Any]
    """The best epoch, as the card's ``validation`` section records it."""
    history: list[dict[str, Any]]
    """Every epoch, as ``history.csv`` records it."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of this invocation."""
    wall_seconds: float = 0.0
    """Wall time of the whole run, over all invocations that resumed it."""


@dataclass
class _PhaseData:
    frozen: nn.Module
    train: Dataset[tuple[torch.Tensor, Target]]
    val: Dataset[tuple[torch.Tensor, Target]]
    workers: int


def train(
    config: TrainConfig,
    *,
    progress: ProgressFactory = no_progress,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train (or resume) a run; see the module docstring for what it writes."""
    with distributed_context() as ctx:
        return _Trainer(config, ctx, progress, on_epoch_end).run()


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext,
        progress: ProgressFactory,
        on_epoch_end: Callable[[EpochRecord], None] | None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.progress = progress if ctx.is_main else no_progress
        self.on_epoch_end = on_epoch_end
        self.profile = config.effective_profile()
        self.run_dir = RunDirectory(config.out or config.default_out(), is_main=ctx.is_main)
        self.model_config = get_config(config.arch)
        size = self.profile.image_size
        assert size is not None  # effective_profile always sets it
        self.init_card = load_card(card_path(config.init_from)) if config.init_from else None
        """The card of the model the run starts from (``--init-from``), if any."""
        # A fine-tuned model keeps the resize filter and normalisation its weights learned,
        # not the arch's defaults (the released EfficientNets resize bilinearly, where the
        # arch's default is bicubic); the input size is the run's own.
        self.preprocessing: Preprocessing = dataclasses.replace(
            self.init_card.preprocessing
            if self.init_card
            else self.model_config.preprocessing(size),
            input_size=size,
            framing=self.profile.framing,
            sample_scale=None,
        )
        self.started = time.perf_counter()
        self.earlier_wall = 0.0
        """Wall time spent on this run by earlier, interrupted invocations."""

    # --- set-up ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if not self.config.manifest.is_file():
            raise LeukoscopeError(f"{self.config.manifest}: manifest not found")
        self.settings = self._settings()
        checkpoint = self.run_dir.prepare(
            self.settings,
            self.preprocessing,
            resume=self.config.resume,
            device=str(self.ctx.device),
        )
        with self.run_dir.logging_to_file():
            if checkpoint is not None and checkpoint.state["finished"]:
                logger.info("%s: already finished; nothing to do", self.run_dir.path)
                return self._result(TrainingState.from_json(checkpoint.state), [])
            return self._train(checkpoint)

    def _settings(self) -> TrainingRun:
        """Everything that determines the run's result; a resumed run must match it."""
        c = self.config
        return TrainingRun(
            manifest=str(c.manifest.resolve()),
            manifest_sha256=sha256_file(c.manifest),
            arch=c.arch,
            weights=c.weights,
            weights_file=str(c.weights_file) if c.weights_file else None,
            init_from=str(c.init_from) if c.init_from else None,
            init_from_sha256=self.init_card.sha256 if self.init_card else None,
            teacher=str(c.teacher) if c.teacher else None,
            teacher_sha256=load_card(card_path(c.teacher)).sha256 if c.teacher else None,
            seed=c.seed,
            world_size=self.ctx.world_size,
            profile=asdict(self.profile),
        )

    def _load_split(self, split: str) -> ImageCache:
        samples, classes = read_manifest(self.config.manifest, split, self.classes)
        key = image_cache_key(self.settings.manifest_sha256, split, classes, self.preprocessing)
        # Rank 0 decodes; the others wait and then map the finished cache.
        if self.ctx.is_main:
            with self.progress(f"Decoding {split} images", len(samples)) as advance:
                cache = build_image_cache(
                    samples,
                    self.preprocessing,
                    key,
                    workers=self.profile.loader_workers(),
                    advance=advance,
                )
        self.ctx.barrier()
        if not self.ctx.is_main:
            cache = build_image_cache(samples, self.preprocessing, key, workers=0)
        for path, reason in cache.skipped:
            logger.warning("skipped unreadable %s image %s: %s", split, path, reason)
        return cache

    def _reference_scale(self) -> SampleScale | None:
        """The training cells' size in the frame, to which other labs' samples are rescaled
        (:class:`~leukoscope.data.preprocess.SampleScale`), from the cached training pixels;
        None, with a warning, when no cell can be located in them."""
        cache = self.train_cache
        chosen = np.asarray(spread(range(len(cache.rows)), SCALE_REFERENCE_IMAGES))
        labels = [self.classes[label] for label in cache.labels[chosen]]
        try:
            return reference_scale(cache.images[cache.rows[chosen]].transpose(0, 2, 3, 1), labels)
        except LeukoscopeError as exc:
            logger.warning("%s: samples from other labs will not be rescaled", exc)
            return None

    # --- training -------------------------------------------------------------------------

    def _train(self, checkpoint: Checkpoint | None) -> TrainResult:
        profile, ctx = self.profile, self.ctx
        _, self.classes = read_manifest(self.config.manifest)
        logger.info(
            "training %s on %s (%d classes: %s), profile %s, %d px, device %s, %d process(es)",
            self.config.arch,
            self.config.manifest,
            len(self.classes),
            ", ".join(self.classes),
            profile.name,
            self.preprocessing.input_size,
            ctx.device,
            ctx.world_size,
        )
        torch.manual_seed(derive_seed(self.config.seed, GLOBAL))
        init_from = self.config.init_from
        model = create_model(
            self.config.arch,
            len(self.classes),
            weights="none" if init_from else self.config.weights,
            weights_file=None if init_from else self.config.weights_file,
        )
        if init_from is not None:
            self._start_from(model, init_from)
        model = model.to(ctx.device)
        self.model = model
        self.chain = ModelChain(model)
        self.chain.check(self.preprocessing.input_size)
        self.train_cache = self._load_split("train")
        self.val_cache = self._load_split("val")
        skipped = self.train_cache.skipped + self.val_cache.skipped
        if not len(self.train_cache.rows) or not len(self.val_cache.rows):
            raise LeukoscopeError(f"{self.config.manifest}: no readable train or val images")
        if self.preprocessing.framing is None:
            self.preprocessing = dataclasses.replace(
                self.preprocessing, sample_scale=self._reference_scale()
            )
        self.train_targets = self._train_targets()
        weights = class_weights(self.train_cache.labels, len(self.classes))
        self.criterion = nn.CrossEntropyLoss(
            weight=weights.to(ctx.device), label_smoothing=profile.label_smoothing
        )
        self.plain = create_transform(self.preprocessing)
        self.augment = create_transform(self.preprocessing, profile.augmentation)
        features = self._cache_features() if profile.cached_views else {}

        state = TrainingState()
        optimizer_state = None
        if checkpoint is not None:
            model.load_state_dict(checkpoint.model)
            state, optimizer_state = TrainingState.from_json(checkpoint.state), checkpoint.optimizer
            self.earlier_wall = state.wall_seconds
            logger.info("resuming after epoch %d", state.epoch)

        for index in range(state.phase, len(profile.phases)):
            phase = profile.phases[index]
            data = self._phase_data(phase, features)
            self._run_phase(index, phase, data, state, optimizer_state)
            optimizer_state = None
            self.ctx.barrier()
            model.load_state_dict(self.run_dir.best_weights())
            state.phase, state.phase_epoch, state.since_best = index + 1, 0, 0
            state.scheduler = None
            state.finished = index + 1 == len(profile.phases)
            self._save_checkpoint(state, None)
        self.run_dir.remove_cache()
        assert state.best is not None  # every phase trains at least one epoch
        logger.info(
            "finished: best val macro-F1 %.4f, accuracy %.4f (epoch %d)",
            state.best.val_macro_f1,
            state.best.val_accuracy,
            state.best.epoch,
        )
        return self._result(state, skipped)

    def _train_targets(self) -> np.ndarray:
        """What the training images are scored against: their class indices, or with a
        teacher the soft targets of :func:`~leukoscope.training.distill.teacher_targets`
        (computed by rank 0, read from the run's cache by the others)."""
        cache, teacher = self.train_cache, self.config.teacher
        if teacher is None:
            return cache.labels
        samples, _ = read_manifest(self.config.manifest, "train", self.classes)
        paths = [samples[row].path for row in cache.rows]

        def targets(advance: Callable[[int], None] | None = None) -> np.ndarray:
            return teacher_targets(
                teacher,
                paths,
                cache.labels,
                self.classes,
                self.run_dir.cache,
                batch_size=self.profile.batch_size,
                workers=self.profile.loader_workers(),
                advance=advance,
            )

        if self.ctx.is_main:
            with self.progress("Teacher predictions", len(paths)) as advance:
                result = targets(advance)
        self.ctx.barrier()
        if not self.ctx.is_main:
            result = targets()
        logger.info("distilling from %s: %d soft targets", teacher, len(result))
        return result

    def _start_from(self, model: TransferModel, path: Path) -> None:
        """Copy a saved model's backbone (and head, when its classes are ours) into ``model``."""
        source, card = load_model(path)
        if card.arch != self.config.arch:
            raise LeukoscopeError(
                f"--init-from {path} is a {card.arch} model, not {self.config.arch}"
            )
        model.backbone.load_state_dict(source.backbone.state_dict())
        same_classes = card.classes == self.classes
        if same_classes:
            try:
                model.head.load_state_dict(source.head.state_dict())
            except RuntimeError as exc:
                raise LeukoscopeError(f"--init-from {path}: its head differs ({exc})") from None
        logger.info(
            "starting from %s (backbone%s, sha256 %s)",
            path,
            " and head" if same_classes else "; new head",
            card.sha256[:12],
        )

    def _result(self, state: TrainingState, skipped: list[tuple[str, str]]) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir.path,
            best=asdict(state.best) if state.best else {},
            history=[asdict(record) for record in state.history],
            skipped=skipped,
            seconds=time.perf_counter() - self.started,
            wall_seconds=state.wall_seconds,
        )

    def _phase_data(self, phase: Phase, features: dict[tuple[str, int], np.ndarray]) -> _PhaseData:
        cut = self.chain.cut(phase.trainable_stages)
        train_cache, val_cache = self.train_cache, self.val_cache
        if features:
            return _PhaseData(
                frozen=nn.Identity(),
                train=FeatureDataset(features["train", cut], self.train_targets),
                val=FeatureDataset(features["val", cut], val_cache.labels),
                workers=0,
            )
        return _PhaseData(
            frozen=self.chain.part(0, cut),
            train=ImageDataset(train_cache, self.augment, targets=self.train_targets),
            val=ImageDataset(val_cache, self.plain),
            workers=self.profile.loader_workers(),
        )

    def _cache_features(self) -> dict[tuple[str, int], np.ndarray]:
        """Frozen-part outputs at every phase's cut, for train and for val (view 0 only)."""
        cacher = FeatureCacher(
            chain=self.chain,
            ctx=self.ctx,
            folder=self.run_dir.cache,
            seed=self.config.seed,
            batch_size=self.profile.batch_size,
            workers=self.profile.loader_workers(),
            plain=self.plain,
            augment=self.augment,
            progress=self.progress,
        )
        cuts = [self.chain.cut(phase.trainable_stages) for phase in self.profile.phases]
        return cacher.build(
            cuts,
            [
                FeatureSplit("train", self.train_cache, self.profile.cached_views),
                FeatureSplit("val", self.val_cache, 1),
            ],
        )

    def _loader(
        self, dataset: Dataset[Any], *, train: bool, epoch: int, workers: int
    ) -> DataLoader[Any]:
        return epoch_loader(
            dataset,
            self.ctx,
            seed=self.config.seed,
            batch_size=self.profile.batch_size,
            train=train,
            epoch=epoch,
            workers=workers,
        )

    def _run_phase(
        self,
        index: int,
        phase: Phase,
        data: _PhaseData,
        state: TrainingState,
        optimizer_state: dict[str, Any] | None,
    ) -> None:
        ctx, model, seed = self.ctx, self.model, self.config.seed
        cut = self.chain.cut(phase.trainable_stages)
        top = self.chain.part(cut, len(self.chain.layers))
        blocks = self.chain.trainable_blocks(phase.trainable_stages)
        model.requires_grad_(False)
        for block in blocks:
            block.requires_grad_(True)
        optimizer = build_optimizer(blocks, phase, self.profile.weight_decay)
        steps = len(self._loader(data.train, train=True, epoch=0, workers=0))
        scheduler = build_scheduler(optimizer, phase, steps)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.device.type == "cuda")
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            if state.scheduler is not None:
                scheduler.load_state_dict(state.scheduler)
            if state.scaler is not None:
                scaler.load_state_dict(state.scaler)
        trained: nn.Module = top
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            trained = DistributedDataParallel(top, device_ids=device_ids)
        n_params = sum(p.numel() for p in top.parameters() if p.requires_grad)
        logger.info(
            "phase %d/%d %s: %d epochs, %d trainable parameters, %d steps per epoch",
            index + 1,
            len(self.profile.phases),
            phase.name,
            phase.epochs,
            n_params,
            steps,
        )
        while state.phase_epoch < phase.epochs and state.since_best < phase.patience:
            epoch = state.epoch + 1
            started = time.perf_counter()
            torch.manual_seed(derive_seed(seed, GLOBAL, epoch, ctx.rank))
            if isinstance(data.train, FeatureDataset):
                data.train.set_epoch(np.random.default_rng(derive_seed(seed, VIEW_CHOICE, epoch)))
            loader = self._loader(data.train, train=True, epoch=epoch, workers=data.workers)
            label = f"Epoch {epoch} ({phase.name} {state.phase_epoch + 1}/{phase.epochs})"
            with self.progress(label, len(loader)) as advance:
                loss_sum, count = train_epoch(
                    trained,
                    data.frozen,
                    loader,
                    self.criterion,
                    optimizer,
                    scheduler,
                    scaler,
                    ctx.device,
                    advance,
                )
            loss_total, count_total = ctx.sum([loss_sum, count])
            scores = [0.0, 0.0, 0.0]
            if ctx.is_main:
                val = self._loader(data.val, train=False, epoch=epoch, workers=data.workers)
                y_pred, y_true, val_loss = predict(
                    top, data.frozen, val, self.criterion, ctx.device
                )
                scores = [val_loss, *accuracy_and_macro_f1(y_true, y_pred)]
            val_loss, val_accuracy, val_f1 = ctx.broadcast(scores)
            record = EpochRecord(
                epoch=epoch,
                phase=phase.name,
                train_loss=loss_total / max(1, count_total),
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                val_macro_f1=val_f1,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.perf_counter() - started,
            )
            improved = state.best is None or val_f1 > state.best.val_macro_f1
            state.since_best = 0 if improved else state.since_best + 1
            state.epoch = epoch
            state.phase_epoch += 1
            state.history.append(record)
            if improved:
                state.best = BestEpoch(epoch, phase.name, val_loss, val_accuracy, val_f1)
                self.run_dir.save_best(self.model, self._card(state.best))
            state.scheduler = scheduler.state_dict()
            state.scaler = scaler.state_dict()
            self._save_checkpoint(state, optimizer.state_dict())
            logger.info(
                "epoch %d %s: train loss %.4f, val loss %.4f, val accuracy %.4f, "
                "val macro-F1 %.4f, lr %.2e, %.1f s%s",
                epoch,
                phase.name,
                record.train_loss,
                val_loss,
                val_accuracy,
                val_f1,
                record.lr,
                record.seconds,
                " (best)" if improved else "",
            )
            if self.on_epoch_end is not None:
                self.on_epoch_end(record)
        if state.since_best >= phase.patience:
            logger.info("early stop: no better val macro-F1 for %d epochs", phase.patience)

    # --- outputs --------------------------------------------------------------------------

    def _save_checkpoint(self, state: TrainingState, optimizer: dict[str, Any] | None) -> None:
        state.wall_seconds = self.earlier_wall + time.perf_counter() - self.started
        self.run_dir.save_checkpoint(self.model, optimizer, state)

    def _card(self, best: BestEpoch) -> ModelCard:
        """The card of the model as trained: its real head, the preprocessing its training
        images went through, its validation scores and the run's settings."""
        return ModelCard(
            arch=self.config.arch,
            classes=self.classes,
            head=self.model.head_config,
            preprocessing=self.preprocessing,
            validation=best,
            training=self.settings,
        )
