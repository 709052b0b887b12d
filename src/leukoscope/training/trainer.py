"""``leukoscope train``: two-phase transfer learning into a self-contained run directory.

Phase 1 trains the new head on a frozen backbone; phase 2 also fine-tunes the backbone's upper
stages at lower, layer-wise decaying learning rates. Every epoch ends with an atomic checkpoint,
so ``--resume`` continues an interrupted run exactly where it stopped. The run directory holds
``config.json``, ``train.log``, ``history.csv``, ``checkpoint.safetensors`` and the best model
(``model.safetensors`` + ``model_card.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from leukoscope.data.datasets import read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.metrics import accuracy_and_macro_f1
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.models import (
    HeadConfig,
    TransferModel,
    create_model,
    get_config,
    load_model,
    save_model,
)
from leukoscope.models.serialization import WEIGHTS_NAME
from leukoscope.training.augment import normalise, train_augmentation
from leukoscope.training.cache import (
    FeatureDataset,
    ImageCache,
    ImageDataset,
    build_image_cache,
    cached_array,
    compute_features,
    image_cache_key,
)
from leukoscope.training.chain import ModelChain
from leukoscope.training.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from leukoscope.training.distributed import DistContext, distributed_context
from leukoscope.training.engine import Advance, predict, train_epoch
from leukoscope.training.optim import build_optimizer, build_scheduler, class_weights
from leukoscope.training.profiles import Phase, Profile, get_profile
from leukoscope.training.seeding import derive_seed, seeded_generator

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Advance]]
"""``progress(description, total or None)`` -> context manager yielding ``advance(n)``."""

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "seconds",
)

# Stream tags for derive_seed: each random stream has its own seed.
_VIEW_AUGMENT, _VIEW_CHOICE, _SHUFFLE, _LOADER, _GLOBAL = range(5)


@contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Advance]:
    yield lambda n: None


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
class TrainResult:
    run_dir: Path
    best: dict[str, Any]
    history: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of this invocation."""
    wall_seconds: float = 0.0
    """Wall time of the whole run, over all invocations that resumed it."""


@dataclass
class _PhaseData:
    frozen: nn.Module
    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    workers: int


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
        self.run_dir = config.out or config.default_out()
        self.started = time.perf_counter()
        self.earlier_wall = 0.0
        """Wall time spent on this run by earlier, interrupted invocations."""

    # --- set-up ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        checkpoint = self._prepare_run_dir()
        handler = self._log_to_file()
        try:
            if checkpoint is not None and checkpoint.state["finished"]:
                logger.info("%s: already finished; nothing to do", self.run_dir)
                return self._result(checkpoint.state, [])
            return self._train(checkpoint)
        finally:
            if handler is not None:
                logging.getLogger("leukoscope").removeHandler(handler)
                handler.close()

    def _settings(self) -> dict[str, Any]:
        """Everything that determines the run's result; a resumed run must match it."""
        c = self.config
        settings = {
            "manifest": str(c.manifest.resolve()),
            "manifest_sha256": sha256_file(c.manifest),
            "arch": c.arch,
            "weights": c.weights,
            "weights_file": str(c.weights_file) if c.weights_file else None,
            "init_from": str(c.init_from) if c.init_from else None,
            "seed": c.seed,
            "world_size": self.ctx.world_size,
            "profile": asdict(self.profile),
        }
        return json.loads(json.dumps(settings))  # as config.json will hold them

    def _prepare_run_dir(self) -> Checkpoint | None:
        """Check resume rules, write ``config.json``; return the checkpoint to resume from."""
        if not self.config.manifest.is_file():
            raise LeukoscopeError(f"{self.config.manifest}: manifest not found")
        self.settings = self._settings()
        checkpoint_path = self.run_dir / CHECKPOINT_NAME
        config_path = self.run_dir / "config.json"
        if checkpoint_path.exists():
            if not self.config.resume:
                raise LeukoscopeError(
                    f"{self.run_dir} already holds a run: pass --resume to continue it, "
                    "or choose another --out"
                )
            saved = self._saved_settings() or {}
            changed = sorted(k for k in self.settings if saved.get(k) != self.settings[k])
            if changed:
                raise LeukoscopeError(
                    f"{self.run_dir}: cannot resume with different settings "
                    f"({', '.join(changed)}); use another --out"
                )
            return load_checkpoint(checkpoint_path)
        if (self.run_dir / WEIGHTS_NAME).exists() and self._saved_settings() != self.settings:
            # Not this run stopped before its first checkpoint (that one just starts over),
            # but another model, e.g. a copied run: never train over it.
            raise LeukoscopeError(
                f"{self.run_dir} holds a model of another run and no checkpoint to resume "
                "from; training would overwrite it: choose another --out"
            )
        if self.ctx.is_main:
            atomic_write_json(
                config_path,
                {
                    "settings": self.settings,
                    "torch": torch.__version__,
                    "device": str(self.ctx.device),
                },
            )
        return None

    def _saved_settings(self) -> dict[str, Any] | None:
        """The settings in the run directory's ``config.json``, if it can be read."""
        try:
            config = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return config.get("settings") if isinstance(config, dict) else None

    def _log_to_file(self) -> logging.Handler | None:
        if not self.ctx.is_main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("leukoscope")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        return handler

    def _load_split(self, split: str, size: int) -> ImageCache:
        samples, classes = read_manifest(self.config.manifest, split, self.classes)
        key = image_cache_key(self.settings["manifest_sha256"], split, classes, size)
        # Rank 0 decodes; the others wait and then map the finished cache.
        if self.ctx.is_main:
            with self.progress(f"Decoding {split} images", len(samples)) as advance:
                cache = build_image_cache(
                    samples, size, key, workers=self.profile.loader_workers(), advance=advance
                )
        self.ctx.barrier()
        if not self.ctx.is_main:
            cache = build_image_cache(samples, size, key, workers=0)
        for path, reason in cache.skipped:
            logger.warning("skipped unreadable %s image %s: %s", split, path, reason)
        return cache

    # --- training -------------------------------------------------------------------------

    def _train(self, checkpoint: Checkpoint | None) -> TrainResult:
        profile, ctx = self.profile, self.ctx
        size = profile.image_size
        assert size is not None
        _, self.classes = read_manifest(self.config.manifest)
        logger.info(
            "training %s on %s (%d classes: %s), profile %s, %d px, device %s, %d process(es)",
            self.config.arch,
            self.config.manifest,
            len(self.classes),
            ", ".join(self.classes),
            profile.name,
            size,
            ctx.device,
            ctx.world_size,
        )
        torch.manual_seed(derive_seed(self.config.seed, _GLOBAL))
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
        self.chain.check(size)
        self.model_config = get_config(self.config.arch)
        self.train_cache = self._load_split("train", size)
        self.val_cache = self._load_split("val", size)
        skipped = self.train_cache.skipped + self.val_cache.skipped
        if not len(self.train_cache.rows) or not len(self.val_cache.rows):
            raise LeukoscopeError(f"{self.config.manifest}: no readable train or val images")
        weights = class_weights(self.train_cache.labels, len(self.classes))
        self.criterion = nn.CrossEntropyLoss(
            weight=weights.to(ctx.device), label_smoothing=profile.label_smoothing
        )
        features = self._cache_features() if profile.cached_views else {}

        state: dict[str, Any] = {
            "phase": 0,
            "phase_epoch": 0,
            "epoch": 0,
            "best": None,
            "since_best": 0,
            "history": [],
            "finished": False,
            "wall_seconds": 0.0,
        }
        optimizer_state = None
        if checkpoint is not None:
            model.load_state_dict(checkpoint.model)
            state, optimizer_state = checkpoint.state, checkpoint.optimizer
            self.earlier_wall = state["wall_seconds"]
            logger.info("resuming after epoch %d", state["epoch"])

        for index in range(state["phase"], len(profile.phases)):
            phase = profile.phases[index]
            data = self._phase_data(phase, features)
            self._run_phase(index, phase, data, state, optimizer_state)
            optimizer_state = None
            self.ctx.barrier()
            best = safetensors.torch.load((self.run_dir / WEIGHTS_NAME).read_bytes())
            model.load_state_dict(best)
            state.update(phase=index + 1, phase_epoch=0, since_best=0, scheduler=None)
            state["finished"] = index + 1 == len(profile.phases)
            self._save_checkpoint(state, None)
        if ctx.is_main and (self.run_dir / "cache").exists():
            shutil.rmtree(self.run_dir / "cache")
        logger.info(
            "finished: best val macro-F1 %.4f, accuracy %.4f (epoch %d)",
            state["best"]["val_macro_f1"],
            state["best"]["val_accuracy"],
            state["best"]["epoch"],
        )
        return self._result(state, skipped)

    def _start_from(self, model: TransferModel, path: Path) -> None:
        """Copy a saved model's backbone (and head, when its classes are ours) into ``model``."""
        source, card = load_model(path)
        if card["arch"] != self.config.arch:
            raise LeukoscopeError(
                f"--init-from {path} is a {card['arch']} model, not {self.config.arch}"
            )
        model.backbone.load_state_dict(source.backbone.state_dict())
        same_classes = tuple(card["classes"]) == self.classes
        if same_classes:
            try:
                model.head.load_state_dict(source.head.state_dict())
            except RuntimeError as exc:
                raise LeukoscopeError(f"--init-from {path}: its head differs ({exc})") from None
        logger.info(
            "starting from %s (backbone%s, sha256 %s)",
            path,
            " and head" if same_classes else "; new head",
            card["sha256"][:12],
        )

    def _result(self, state: dict[str, Any], skipped: list[tuple[str, str]]) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            best=state["best"],
            history=state["history"],
            skipped=skipped,
            seconds=time.perf_counter() - self.started,
            wall_seconds=state["wall_seconds"],
        )

    def _phase_data(self, phase: Phase, features: dict[tuple[str, int], np.ndarray]) -> _PhaseData:
        cut = self.chain.cut(phase.trainable_stages)
        train_cache, val_cache = self.train_cache, self.val_cache
        if features:
            return _PhaseData(
                frozen=nn.Identity(),
                train=FeatureDataset(features["train", cut], train_cache.labels),
                val=FeatureDataset(features["val", cut], val_cache.labels),
                workers=0,
            )
        augment, plain = self._transforms()
        return _PhaseData(
            frozen=self.chain.part(0, cut),
            train=ImageDataset(train_cache, augment),
            val=ImageDataset(val_cache, plain),
            workers=self.profile.loader_workers(),
        )

    def _transforms(self) -> tuple[v2.Compose, v2.Compose]:
        """(training augmentation, plain normalisation) for uint8 images."""
        mean, std = self.model_config.mean, self.model_config.std
        profile = self.profile
        augment = train_augmentation(
            mean, std, colour_jitter=profile.colour_jitter, hed_sigma=profile.hed_sigma
        )
        return augment, normalise(mean, std)

    def _cache_features(self) -> dict[tuple[str, int], np.ndarray]:
        """Frozen-part outputs at every phase's cut, for train and for val (view 0 only).

        The lowest cut is computed from images, each higher one from the cut below it. Rank 0
        computes them into the run directory; the other ranks then map them.
        """
        cuts = sorted({self.chain.cut(phase.trainable_stages) for phase in self.profile.phases})
        out: dict[tuple[str, int], np.ndarray] = {}
        for split, data, views in (
            ("train", self.train_cache, self.profile.cached_views),
            ("val", self.val_cache, 1),
        ):
            below: np.ndarray | None = None
            for low, cut in zip([0, *cuts], cuts, strict=False):
                path = self.run_dir / "cache" / f"{split}-cut{cut}.npy"
                if self.ctx.is_main:
                    # Only the deepest cut gets every view: the shallower phases (the head
                    # warm-up) are short, and each view costs another pass through the stages.
                    n_views = views if below is None else 1
                    self._feature_array(path, data, n_views, low, cut, below)
                self.ctx.barrier()
                below = out[split, cut] = np.load(path, mmap_mode="r")
        return out

    def _feature_array(
        self,
        path: Path,
        data: ImageCache,
        views: int,
        low: int,
        cut: int,
        below: np.ndarray | None,
    ) -> None:
        """Cache chain layers ``low:cut`` applied to ``below`` (or to the images if None)."""
        augment, plain = self._transforms()
        seed = self.config.seed

        def batches(view: int) -> Iterable[torch.Tensor]:
            if below is not None:
                return _array_batches(below[view], self.profile.batch_size)
            # View 0 is the image as is; the others are augmented, each image from its own
            # seeded stream, in worker processes (one thread each: per-image ops are small).
            dataset = ImageDataset(
                data, plain if view == 0 else augment, (seed, _VIEW_AUGMENT, view)
            )
            loader = self._loader(
                dataset, train=False, epoch=0, workers=self.profile.loader_workers()
            )
            return (inputs for inputs, _ in loader)

        with torch.no_grad():
            example = torch.zeros(1, *data.images.shape[1:], device=self.ctx.device)
            feature_shape = self.chain.part(0, cut).eval()(example).shape[1:]
        network = self.chain.part(low, cut)

        def fill(array: np.ndarray) -> dict[str, Any]:
            started = time.perf_counter()
            label = f"Caching {path.stem} features"
            with self.progress(label, array.shape[0] * array.shape[1]) as advance:
                compute_features(array, batches, network, self.ctx.device, advance)
            logger.info(
                "cached %s features %s in %.0f s",
                path.stem,
                "x".join(map(str, array.shape)),
                time.perf_counter() - started,
            )
            return {"views": array.shape[0], "cut": cut}

        cached_array(path, (views, len(data.rows), *feature_shape), np.float16, fill)

    def _loader(
        self, dataset: Dataset[Any], *, train: bool, epoch: int, workers: int
    ) -> DataLoader[Any]:
        """Training: this rank's shuffled shard, reshuffled per epoch. Otherwise: in order.
        Worker seeds come from a generator seeded by (seed, epoch, rank), never from the
        global RNG."""
        ctx, seed, batch_size = self.ctx, self.config.seed, self.profile.batch_size
        sampler = None
        if train:
            sampler = DistributedSampler(
                dataset,
                num_replicas=ctx.world_size,
                rank=ctx.rank,
                shuffle=True,
                seed=derive_seed(seed, _SHUFFLE),
            )
            sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size if train else 2 * batch_size,
            sampler=sampler,
            num_workers=workers,
            generator=seeded_generator(seed, _LOADER, epoch, ctx.rank),
            drop_last=sampler is not None and len(sampler) > batch_size,
            pin_memory=ctx.device.type == "cuda",
        )

    def _run_phase(
        self,
        index: int,
        phase: Phase,
        data: _PhaseData,
        state: dict[str, Any],
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
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
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
        while state["phase_epoch"] < phase.epochs and state["since_best"] < phase.patience:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            torch.manual_seed(derive_seed(seed, _GLOBAL, epoch, ctx.rank))
            if isinstance(data.train, FeatureDataset):
                data.train.set_epoch(np.random.default_rng(derive_seed(seed, _VIEW_CHOICE, epoch)))
            loader = self._loader(data.train, train=True, epoch=epoch, workers=data.workers)
            label = f"Epoch {epoch} ({phase.name} {state['phase_epoch'] + 1}/{phase.epochs})"
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
            loss_sum, count = ctx.sum([loss_sum, count])
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
                train_loss=loss_sum / max(1, count),
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                val_macro_f1=val_f1,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.perf_counter() - started,
            )
            improved = state["best"] is None or val_f1 > state["best"]["val_macro_f1"]
            state["since_best"] = 0 if improved else state["since_best"] + 1
            state["epoch"] = epoch
            state["phase_epoch"] += 1
            state["history"].append(asdict(record))
            if improved:
                state["best"] = {
                    "epoch": epoch,
                    "phase": phase.name,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                    "val_macro_f1": val_f1,
                }
                self._save_best(state["best"])
            state["scheduler"] = scheduler.state_dict()
            state["scaler"] = scaler.state_dict()
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
        if state["since_best"] >= phase.patience:
            logger.info("early stop: no better val macro-F1 for %d epochs", phase.patience)

    # --- outputs --------------------------------------------------------------------------

    def _save_checkpoint(self, state: dict[str, Any], optimizer: dict[str, Any] | None) -> None:
        state["wall_seconds"] = self.earlier_wall + time.perf_counter() - self.started
        if not self.ctx.is_main:
            return
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME, Checkpoint(self.model.state_dict(), optimizer, state)
        )
        atomic_write_text(self.run_dir / "history.csv", _history_csv(state["history"]))

    def _save_best(self, best: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        head = HeadConfig()
        card = {
            "arch": self.config.arch,
            "classes": list(self.classes),
            "input_size": self.profile.image_size,
            "mean": list(self.model_config.mean),
            "std": list(self.model_config.std),
            "interpolation": "bilinear",
            "head": {"hidden": head.hidden, "dropout": head.dropout},
            "manifest_sha256": self.settings["manifest_sha256"],
            "metrics": {"split": "val", **best},
            "training": self.settings,
        }
        save_model(self.run_dir, self.model, card)


def _array_batches(array: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(array), batch_size):
        yield torch.from_numpy(np.asarray(array[start : start + batch_size], np.float32))


def _history_csv(history: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()
