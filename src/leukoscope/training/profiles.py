"""Training recipes as data: one :class:`Profile` per named recipe, no branching on names.

``fast`` is sized for two CPU cores: the frozen lower backbone runs once per cached view, and
each epoch only runs the upper stages. ``full`` trains end to end with online augmentation and
is meant for GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from leukoscope.data.preprocess import Augmentation, Framing
from leukoscope.errors import LeukoscopeError


@dataclass(frozen=True)
class Phase:
    """One training phase: which blocks learn, for how long and how fast."""

    name: str
    epochs: int
    lr: float
    """Peak learning rate of the head; backbone stages get less (see ``stage_lr_decay``)."""
    trainable_stages: int | None
    """How many of the backbone's top stages learn: 0 = head only, None = all of them."""
    stage_lr_decay: float = 1.0
    """The top stage learns at ``lr * decay``, the one below at ``lr * decay**2``, and so on."""
    warmup_epochs: float = 1.0
    patience: int = 3
    """Stop the phase after this many epochs without a better validation macro-F1."""


MILD = Augmentation(colour_jitter=0.1, hed_sigma=0.03)
"""The stain and colour jitter the first released models were trained with."""


@dataclass(frozen=True)
class Profile:
    """A complete training recipe."""

    name: str
    description: str
    phases: tuple[Phase, ...]
    image_size: int | None = None
    """Square input side; None = the arch's native size."""
    batch_size: int = 64
    cached_views: int = 0
    """0: augment images online every step. N > 0: precompute the frozen part's output for N
    views of each training image (view 0 unaugmented, the others augmented) and draw one view
    per image per epoch."""
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augmentation: Augmentation = MILD
    """What training varies in each image besides its orientation."""
    framing: Framing | None = None
    """Cell framing of every image (training, and the model's card for every later use)."""
    workers: int | None = None
    """Image-decoding worker processes; None = min(8, CPU count)."""

    def loader_workers(self) -> int:
        return self.workers if self.workers is not None else min(8, os.cpu_count() or 1)


LAB_ROBUST = Augmentation(
    colour_jitter=0.2,
    hed_sigma=0.08,
    hue=0.06,
    channel_gain=0.2,
    gamma=0.3,
    grayscale=0.05,
    scale=0.25,
    blur=1.5,
    noise=0.02,
    jpeg_quality=40,
)
"""Augmentation for other labs' images: stain, white balance, gamma, defocus, noise and JPEG
well beyond one lab's variation, and the cell's size in the frame within what framing leaves."""

FAST = Profile(
    name="fast",
    description="CPU budget: the head on cached pooled features, then the upper stages "
    "fine-tuned on cached lower-stage feature maps of a few views per image",
    image_size=160,
    batch_size=64,
    cached_views=2,
    workers=2,
    phases=(
        Phase("head", epochs=20, lr=2e-3, trainable_stages=0, warmup_epochs=1, patience=5),
        Phase(
            "finetune",
            epochs=8,
            lr=2e-3,
            trainable_stages=4,
            stage_lr_decay=0.7,
            warmup_epochs=1,
            patience=3,
        ),
    ),
)

FULL = Profile(
    name="full",
    description="GPU-oriented: head warm-up, then end-to-end fine-tuning at the arch's "
    "native resolution with online augmentation",
    batch_size=64,
    cached_views=0,
    augmentation=Augmentation(colour_jitter=0.2, hed_sigma=0.05),
    phases=(
        Phase("head", epochs=3, lr=1e-3, trainable_stages=0, warmup_epochs=0.5, patience=3),
        Phase(
            "finetune",
            epochs=30,
            lr=3e-4,
            trainable_stages=None,
            stage_lr_decay=0.8,
            warmup_epochs=1,
            patience=6,
        ),
    ),
)

FULL_ROBUST = replace(
    FULL,
    name="full-robust",
    description="the full recipe with the lab-robust stain, colour, defocus, noise and JPEG "
    "augmentation, unframed and unzoomed (a sample's magnification is matched when it is "
    "classified); every stage learns, including the lower ones that see colour first",
    augmentation=replace(LAB_ROBUST, scale=0.0),
)

PROFILES: dict[str, Profile] = {
    "fast": FAST,
    "fast-robust": replace(
        FAST,
        name="fast-robust",
        description="the fast CPU recipe on framed cells with lab-robust augmentation and more "
        "cached views",
        cached_views=3,
        augmentation=LAB_ROBUST,
        framing=Framing(),
        phases=(FAST.phases[0], replace(FAST.phases[1], epochs=6)),
    ),
    "full": FULL,
    "full-robust": FULL_ROBUST,
    "robust-finetune": replace(
        FULL_ROBUST,
        name="robust-finetune",
        description="a trained model (--init-from, with itself as --teacher) fine-tuned end to "
        "end for a few epochs under the lab-robust augmentation at a low learning rate: sized "
        "for two CPU cores, where training from ImageNet weights is not",
        phases=(replace(FULL.phases[-1], epochs=3, lr=1e-4, warmup_epochs=0.2, patience=2),),
    ),
    "gray-finetune": replace(
        FULL,
        name="gray-finetune",
        description="a trained model (--init-from, with a --teacher) fine-tuned end to end for "
        "up to 10 epochs with half of its images made grey, so that it cannot lean on the "
        "stain's hue alone; sized for two CPU cores",
        augmentation=replace(FULL.augmentation, grayscale=0.5),
        phases=(replace(FULL.phases[-1], epochs=10, warmup_epochs=0.5, patience=4),),
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile, or a LeukoscopeError listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise LeukoscopeError(
            f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}"
        ) from None
