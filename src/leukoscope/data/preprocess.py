"""Every step from a decoded cell image to the tensor a model sees, in one place.

Training, evaluation, prediction, ONNX export and the web service all turn an image into model
input through this module, so that a model is used exactly as it was trained. Like timm's
``resolve_data_config`` -> ``create_transform``, a typed :class:`Preprocessing` (the model
card's ``preprocessing`` section, or the registry's defaults for a new training run) drives it:

1. :func:`to_pixels`: the decoded image, re-framed around its white cell when the model was
   trained so (:class:`Framing`: :mod:`leukoscope.cells.locate` finds the cell and
   :mod:`leukoscope.cells.framing` crops a
   square in which its diameter is a fixed fraction of the side, whatever the source's
   magnification and crop), (large JPEGs drafted down to :attr:`Preprocessing.
   draft_size` while decoding) as an RGB uint8 array, resized to the square input size with
   Pillow's antialiased ``interpolation``. The result (H, W, 3) is what the prediction loaders
   hand to the model and what the training cache stores (transposed to C, H, W): a quarter of
   the bytes of floats. Any step on the full-resolution image belongs before the resize in
   :func:`to_pixels`, the one function all of them call.
2. :func:`to_unit` then :func:`standardise`: ``x / 255``, then ``(x - mean) / std`` per channel.
   The predictor's :class:`~leukoscope.inference.predictor.PixelModel` (and so every ONNX
   export) runs these very functions inside the graph; training runs them in
   :func:`create_transform`, with the augmentation between the two. The same float operations
   in the same order give bit-identical inputs (torchvision's ``ToDtype(scale=True)`` multiplies
   by 1/255 instead and differs by one unit in the last place).

Why resize the whole crop to a square instead of cropping: PBC crops are nearly square with the
cell centred, so the aspect change is under 2% and no part of the cell is lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from PIL import Image

from leukoscope.cells.framing import DEFAULT_CELL_FRACTION, PadMode, crop, frame_cell
from leukoscope.data.images import decode_rgb
from leukoscope.errors import ImageDecodeError, LeukoscopeError
from leukoscope.machine import cpu_cores

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

    from leukoscope.data.datasets import CellImageDataset, Sample

T = TypeVar("T")

Interpolation = Literal["bilinear", "bicubic"]
"""Resampling filters a model may be trained with (Pillow's, antialiased when shrinking)."""

RESAMPLE: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Framing:
    """Re-frame each image around its white cell before the resize.

    Other labs crop tighter than PBC: the cell's diameter is about 0.5 (cellavision) and 0.6
    (tecom) of the image side against about 0.37 in PBC (``benchmarks/locate.py``). Framing
    makes the cell's diameter ``cell_fraction`` of the frame whatever the source. It also
    removes the absolute cell size as a cue (in PBC monocytes fill 0.46 of the frame and
    lymphocytes 0.30), so a model must be trained with the framing it is used with, and even
    then lymphocytes and monocytes are harder to tell apart (docs/results.md, "Other labs'
    images").

    Parameters
    ----------
    cell_fraction
        Cell diameter / frame side (PBC's median by default, so PBC crops change little).
    pad
        How the frame is filled beyond the image (see :func:`~leukoscope.cells.framing.frame_cell`).
    """

    cell_fraction: float = DEFAULT_CELL_FRACTION
    pad: PadMode = "border"


@dataclass(frozen=True)
class SampleScale:
    """Rescale every image of a sample by one factor, so that its cells' size in the frame
    matches the training images'.

    A lab's microscope, camera and crop fix how large its cells appear in its images: PBC's
    cells span about 0.38 of the side (the median over the 5-class training split), other
    labs' 0.53 (cellavision) and 0.62 (tecom). Unlike :class:`Framing`, which brings every cell
    to one size, one factor per sample keeps the sizes of its cells relative to one another, the
    cue that tells a lymphocyte (0.30 in PBC) from a monocyte (0.46): released models need no
    retraining.

    The factor is first the median over the sample's cells of (diameter / image side, from
    :func:`~leukoscope.cells.locate.locate_cell`) / ``cell_fraction``. That alone reads a
    sample of only lymphocytes as 0.76 times magnified, and rescaling it cost the 224-px
    SqueezeNet a third of PBC's test lymphocytes (62% right instead of 99%). So it is refined
    :data:`SCALE_REFINEMENTS` times: the measured cells are classified at the current factor and
    the factor becomes the median of each cell's fraction over its predicted class's training
    median (``class_fractions``). ``benchmarks/scale.py`` (``benchmarks/results/scale.json``):
    with one refinement every one-class sample of PBC test cells keeps its accuracy (lymphocytes
    0.91, monocytes 0.96: within the tolerance), while cellavision is read as 1.34 (77% right;
    1.37 and 81% unrefined, 1.44 from its true labels) and tecom as 1.65 (40%).

    The factor is applied only when the sample has at least ``min_cells`` located cells and is
    off by more than ``tolerance`` either way, so that images like the training images pass
    unchanged.

    Parameters
    ----------
    cell_fraction
        Median cell diameter / image side over the training images (``leukoscope scale``).
    cells
        How many training cells that median comes from.
    class_fractions
        The same median per class, for the classes with located cells.
    tolerance
        Factors within ``[1 / tolerance, tolerance]`` leave the images unchanged.
    min_cells
        Fewest located cells a sample needs for its factor to be used.
    lab_factor
        The magnification of the one lab a model was adapted to, measured on its labelled
        cells (``leukoscope adapt``). A sample whose cells, classified at this factor,
        confirm it (refined once, it stays within ``tolerance``) is rescaled by it; any other
        sample (another microscope's) is measured as usual, from its plain median. From the
        plain median alone, the first calls misread another lab's lymphocytes as monocytes
        and pull the factor down: on cellavision a model adapted on 10 cells per class
        estimated 1.30-1.41 for the rest, where the labels give 1.44-1.47
        (``benchmarks/adapt.py``). None: a model that was not adapted with labels.
    """

    cell_fraction: float
    cells: int
    class_fractions: dict[str, float] = dataclasses.field(default_factory=dict)
    tolerance: float = 1.1
    min_cells: int = 8
    lab_factor: float | None = None


SCALE_CELLS = 32
"""Most images of a sample whose cells are measured (and classified once more) for its
:class:`SampleScale` factor, spread evenly through it.

Every ``predict`` of :attr:`SampleScale.min_cells` or more files pays for it before its first
batch: with 64 cells about a second on two cores, a fifth of a 1,227-file run of the fast
SqueezeNet (``benchmarks/inference.py``, ``scale_estimate_s``). On random samples of 100 cells
(``benchmarks/scale_cells.py``, ``benchmarks/results/scale-cells*.json``, AMD EPYC with AVX2
only), 32 cells instead of 64 took half the time (0.46 against 0.90 s for the SqueezeNet,
0.73 against 1.47 s for the EfficientNet, on PBC samples), rescaled no PBC sample (neither did
64), and classified every source as well or better: ``wbc5-squeezenet1_1-128`` 98.83% on PBC
with either, 76.6% against 76.3% on cellavision, 35.3% against 35.2% on tecom (30 samples
each); ``wbc5-efficientnet_lite0`` 99.55% with either, 73.3% against 72.1%, 13.8% against
13.5% (20 each). The factor strays further from the one all of a set's cells give (90th
percentile 5-7% against 2-5%), well inside the 10% tolerance."""
LABELLED_SCALE_CELLS = 64
"""Most labelled cells (``adapt``) the lab's factor is measured on: each is measured against
its own class, and a lab's factor is measured once, not before every prediction."""

SCALE_REFINEMENTS = 1
"""Class-aware refinements of a sample's factor (see :class:`SampleScale`). One makes one-class
PBC samples safe; a second moved cellavision's factor further from its true labels' (1.32,
74% right) and changed no PBC sample's result (``benchmarks/scale.py``)."""

SCALE_REFERENCE_IMAGES = 500
"""Training images whose cells are measured for a model's :class:`SampleScale` (spread evenly
over the split): the median of 500 varies by under 1% between draws."""

MAX_SCALE = 2.5
"""Largest factor (and smallest, inverted) a sample is rescaled by; beyond it is not a crop of
one white cell."""


@dataclass(frozen=True)
class ScaleEstimate:
    """What :func:`estimate_scale` found for one sample.

    Attributes
    ----------
    factor
        What the images are rescaled by (1: unchanged).
    measured
        The factor the cells gave, applied or not; None when no cell was measured.
    cells
        How many cells were measured.
    """

    factor: float
    measured: float | None
    cells: int

    def to_dict(self) -> dict[str, Any]:
        """As reports record it, with :attr:`message`."""
        return {**dataclasses.asdict(self), "message": self.message}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ScaleEstimate:
        """The estimate :meth:`to_dict` recorded (its message aside)."""
        measured = record["measured"]
        return cls(
            factor=float(record["factor"]),
            measured=None if measured is None else float(measured),
            cells=int(record["cells"]),
        )

    @property
    def message(self) -> str:
        """One line for the user: what was measured and done."""
        if self.measured is None:
            return "no cell could be measured to match the training images' magnification"
        size = (
            f"this sample's cells are {self.measured:.2f}x as large in the frame as the "
            f"training images' ({self.cells} measured)"
        )
        if self.factor != 1.0:
            return f"{size}: images rescaled by 1/{self.factor:.2f} to match"
        return f"{size}: images used as they are"


UNSCALED = ScaleEstimate(factor=1.0, measured=None, cells=0)
"""The estimate of a model or sample that is not rescaled."""


def cell_fraction(rgb: np.ndarray) -> float | None:
    """The white cell's diameter / the image's longest side (None when no cell is found)."""
    from leukoscope.cells.locate import (  # here: see leukoscope.cells.framing
        CellLocation,
        locate_cell,
    )

    location = locate_cell(rgb)
    if not isinstance(location, CellLocation):
        return None
    return location.diameter / max(rgb.shape[:2])


def spread(items: Sequence[T], count: int) -> Sequence[T]:
    """At most ``count`` of ``items``, evenly spaced through them.

    >>> spread(list(range(10)), 3)
    [0, 3, 6]
    >>> len(spread(list(range(100)), 32))
    32
    """
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def reference_scale(images: Iterable[np.ndarray], labels: Iterable[str]) -> SampleScale:
    """The :class:`SampleScale` of a model trained on ``images`` (RGB uint8 arrays) of the
    classes ``labels``.

    Raises
    ------
    LeukoscopeError
        When no cell could be located in any image.
    """
    by_class: dict[str, list[float]] = {}
    for rgb, label in zip(images, labels, strict=True):
        fraction = cell_fraction(rgb)
        if fraction is not None:
            by_class.setdefault(label, []).append(fraction)
    if not by_class:
        raise LeukoscopeError("no white cell could be located in any training image")
    fractions = np.concatenate(list(by_class.values()))
    return SampleScale(
        cell_fraction=round(float(np.median(fractions)), 4),
        cells=len(fractions),
        class_fractions={k: round(float(np.median(v)), 4) for k, v in sorted(by_class.items())},
    )


def measure_reference_scale(
    samples: Sequence[Sample], classes: Sequence[str], draft_size: int
) -> SampleScale:
    """:func:`reference_scale` of at most :data:`SCALE_REFERENCE_IMAGES` training image files,
    spread evenly (unreadable ones left out), decoded as the predictor decodes them."""
    chosen = spread(samples, SCALE_REFERENCE_IMAGES)
    images, labels = [], []
    for sample in chosen:
        rgb = read_rgb(sample.path, draft_size)
        if rgb is not None:
            images.append(rgb)
            labels.append(classes[sample.label])
    return reference_scale(images, labels)


def read_rgb(path: str | Path, draft_size: int) -> np.ndarray | None:
    """``path`` decoded to an RGB uint8 array (JPEGs drafted down to ``draft_size``); None
    when it is unreadable (the prediction itself reports why)."""
    try:
        return np.asarray(decode_rgb(path, draft_size=draft_size))
    except ImageDecodeError:
        return None


Classify = Callable[[Sequence[np.ndarray], float], Sequence[str]]
"""Predicted classes of images (RGB uint8 arrays) rescaled by a factor."""


def estimate_scale(
    images: Sequence[np.ndarray],
    scale: SampleScale | None,
    classify: Classify | None = None,
    labels: Sequence[str] | None = None,
) -> ScaleEstimate:
    """The factor one sample's images (RGB uint8 arrays) are rescaled by.

    Parameters
    ----------
    images
        The sample's images (at most a few dozen: see :data:`SCALE_CELLS`).
    scale
        The model's :class:`SampleScale`; None gives :data:`UNSCALED`.
    classify
        The model's predictions, for the class-aware refinement (none without it or without
        ``scale.class_fractions``).
    labels
        The images' true classes, when a person has labelled them (cells to adapt a model
        on): each cell is then measured against its own class's training median, and
        ``classify`` is not needed: a model's first calls at the plain factor can be wrong
        in just the way the refinement is for (other labs' lymphocytes called monocytes).

    Returns
    -------
    ScaleEstimate

    The cells are located in one thread per core: SciPy and scikit-image release the GIL for
    much of the locator's work, and the estimate is part of every ``predict``'s fixed cost
    before its first batch (``benchmarks/inference.py``: end to end against pipeline).
    """
    if scale is None:
        return UNSCALED
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    with ThreadPoolExecutor(cpu_cores(), thread_name_prefix="leukoscope-scale") as pool:
        found = list(pool.map(cell_fraction, images))
    located = [i for i, f in enumerate(found) if f is not None]
    if not located:
        return UNSCALED
    fractions = np.array([found[i] for i in located])
    measured = _clip_scale(np.median(fractions) / scale.cell_fraction)
    if scale.class_fractions and labels is not None:
        measured = _clip_scale(
            np.median(fractions / _expected(scale, [labels[i] for i in located]))
        )
    elif scale.class_fractions and classify is not None:
        cells = [images[i] for i in located]
        lab = scale.lab_factor
        if lab is not None and _within(_refine(fractions, cells, lab, scale, classify), lab, scale):
            measured = lab
        else:
            measured = _refine(fractions, cells, measured, scale, classify)
    applied = len(located) >= scale.min_cells and not _within(measured, 1.0, scale)
    return ScaleEstimate(factor=measured if applied else 1.0, measured=measured, cells=len(located))


def _refine(
    fractions: np.ndarray,
    cells: Sequence[np.ndarray],
    factor: float,
    scale: SampleScale,
    classify: Classify,
) -> float:
    """``factor`` refined :data:`SCALE_REFINEMENTS` times: the cells are classified at it and
    measured against their predicted classes' training sizes."""
    for _ in range(SCALE_REFINEMENTS):
        factor = _clip_scale(np.median(fractions / _expected(scale, classify(cells, factor))))
    return factor


def _within(factor: float, reference: float, scale: SampleScale) -> bool:
    """Whether ``factor`` is within the scale's tolerance of ``reference``."""
    return 1 / scale.tolerance <= factor / reference <= scale.tolerance


def _expected(scale: SampleScale, labels: Sequence[str]) -> np.ndarray:
    """The training images' median cell fraction of each label's class."""
    return np.array([scale.class_fractions.get(label, scale.cell_fraction) for label in labels])


def _clip_scale(factor: float) -> float:
    return float(np.clip(factor, 1 / MAX_SCALE, MAX_SCALE))


def rescale(rgb: np.ndarray, factor: float, pad: PadMode = "border") -> np.ndarray:
    """``rgb`` with its content ``factor`` times smaller in the frame: the window ``factor``
    times the image's size around its centre (filled beyond the image as in
    :func:`~leukoscope.cells.framing.crop`), so that the resize to the input size shrinks it.

    >>> rescale(np.zeros((10, 20, 3), np.uint8), 1.5).shape
    (15, 30, 3)
    """
    if factor == 1.0:
        return rgb
    rows, columns = rgb.shape[:2]
    height, width = max(1, round(rows * factor)), max(1, round(columns * factor))
    return crop(rgb, (columns - width) // 2, (rows - height) // 2, width, height, pad)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from a decoded image: the model card's ``preprocessing``.

    Parameters
    ----------
    input_size
        Side of the square input, in pixels.
    mean, std
        Per-channel normalisation of ``x / 255`` (RGB order) that the backbone's weights expect.
    interpolation
        Resampling filter of the resize.
    framing
        Cell framing before the resize; None uses the whole image as it is.
    sample_scale
        The training images' cell size, to which other labs' samples are rescaled; None
        leaves every image as it is (a framed model needs none).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"
    framing: Framing | None = None
    sample_scale: SampleScale | None = None

    @property
    def draft_size(self) -> int:
        """Smallest side a JPEG may be scaled down to while decoding: twice the input size.

        Large tiles decode several times faster, and the resize that follows still sees the
        detail training saw. Drafting down to the input size itself does not: on PBC crops at
        128 px it cost 3 of 1,227 validation images (98.94% accuracy instead of 99.19%).
        """
        return 2 * self.input_size


def resize(
    rgb: np.ndarray | Image.Image, size: int, interpolation: Interpolation = "bilinear"
) -> np.ndarray:
    """An RGB image (uint8 array (H, W, 3) or Pillow image) resized to ``size`` x ``size`` with
    Pillow's antialiased ``interpolation``, as a uint8 array.

    >>> resize(np.zeros((10, 20, 3), np.uint8), 4).shape
    (4, 4, 3)
    """
    image = Image.fromarray(rgb) if isinstance(rgb, np.ndarray) else rgb
    return np.asarray(image.resize((size, size), RESAMPLE[interpolation]))


def frame(rgb: np.ndarray, framing: Framing) -> tuple[np.ndarray, str | None]:
    """``rgb`` framed around its white cell, or unchanged with the reason no cell was found.

    An image without a credible cell is still classified, as it is, but the reason goes with
    its prediction and flags it uncertain: never a silent guess.
    """
    from leukoscope.cells.locate import NoCell, locate_cell  # here: see leukoscope.cells.framing

    location = locate_cell(rgb)
    if isinstance(location, NoCell):
        return rgb, f"no white cell found for framing: {location.reason}"
    return frame_cell(rgb, location, framing.cell_fraction, framing.pad), None


def to_noted_pixels(
    image: Image.Image, config: Preprocessing, factor: float = 1.0
) -> tuple[np.ndarray, str | None]:
    """A decoded image as the model's uint8 input pixels (H, W, 3), with a note when the
    preprocessing could not do what the model expects (no cell found for its framing).

    Parameters
    ----------
    image
        A decoded image of any size and mode (see :func:`~leukoscope.data.images.decode_rgb`).
    config
        The model's preprocessing.
    factor
        The image's sample's :class:`ScaleEstimate` factor (1: none).

    Returns
    -------
    tuple of numpy.ndarray and str or None
        uint8 array of shape (input_size, input_size, 3), and the note or None.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    if factor == 1.0 and config.framing is None:
        # Resized as decoded: the same pixels without two copies of the image (an array and
        # back), which hold the GIL that the decoding threads share.
        return resize(image, config.input_size, config.interpolation), None
    rgb = rescale(np.asarray(image), factor)
    note = None
    if config.framing is not None:
        rgb, note = frame(rgb, config.framing)
    return resize(rgb, config.input_size, config.interpolation), note


def to_pixels(image: Image.Image, config: Preprocessing) -> np.ndarray:
    """:func:`to_noted_pixels` without the note (training, explanations)."""
    return to_noted_pixels(image, config)[0]


def decode_pixels(
    path: str | Path, config: Preprocessing, factor: float = 1.0
) -> tuple[np.ndarray, str | None]:
    """An image file decoded (drafted to ``config.draft_size``) into the model's uint8 input
    pixels by :func:`to_noted_pixels` (rescaled by ``factor``), with its note.

    Raises
    ------
    ImageDecodeError
        Naming the file, when it cannot be read as an image.
    """
    return to_noted_pixels(decode_rgb(path, draft_size=config.draft_size), config, factor)


def pixels_dataset(
    samples: Sequence[Sample], config: Preprocessing, factor: float = 1.0
) -> CellImageDataset:
    """``samples`` decoded (drafted to ``config.draft_size``) into uint8 pixel tensors
    (H, W, 3) by :func:`to_noted_pixels` (rescaled by ``factor``), each with its note;
    unreadable files become error entries."""
    from leukoscope.data.datasets import CellImageDataset

    return CellImageDataset(samples, _PixelTransform(config, factor), draft_size=config.draft_size)


@dataclass(frozen=True)
class _PixelTransform:
    """:func:`to_pixels` as a tensor; a class, not a closure, so loader workers can pickle it."""

    config: Preprocessing
    factor: float = 1.0

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, str | None]:
        import torch

        pixels, note = to_noted_pixels(image, self.config, self.factor)
        return torch.from_numpy(pixels.copy()), note


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (``x / 255``), any layout."""
    return pixels.float() / 255.0


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with per-channel ``mean`` and ``std`` shaped to broadcast over
    ``x``'s channel axis (e.g. (1, 3, 1, 1) for NCHW, (3, 1, 1) for CHW)."""
    return (x - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Training-time randomness: a random dihedral view (a cell has no up or left), then each
    of these in the order a lab's acquisition applies them, at the given strength (0 turns one
    off): the cell's size in the frame, the stain, colour, white balance, gamma, defocus, sensor
    noise and JPEG compression."""

    colour_jitter: float = 0.0
    """Brightness, contrast and saturation jitter strength (``v2.ColorJitter``)."""
    hed_sigma: float = 0.0
    """Haematoxylin/eosin/DAB stain jitter strength (see :class:`HEDJitter`)."""
    hue: float = 0.0
    """Hue jitter (``v2.ColorJitter``'s hue, at most 0.5)."""
    channel_gain: float = 0.0
    """Per-channel gain strength (see :class:`ChannelGain`)."""
    gamma: float = 0.0
    """Gamma strength (see :class:`RandomGamma`)."""
    grayscale: float = 0.0
    """Probability of a grey image."""
    scale: float = 0.0
    """Zoom strength (see :class:`RandomScale`)."""
    blur: float = 0.0
    """Largest Gaussian blur sigma in pixels, applied to half of the images (defocus)."""
    noise: float = 0.0
    """Largest standard deviation of Gaussian noise, in [0, 1] intensity units."""
    jpeg_quality: int = 100
    """Lowest JPEG quality applied to a third of the images; 100 turns it off."""


def create_transform(config: Preprocessing, augmentation: Augmentation | None = None) -> v2.Compose:
    """The transform from uint8 pixels (3, H, W), as :func:`to_pixels` made them, to the float
    tensor the backbone takes: for evaluation (``augmentation`` None) exactly what
    :class:`~leukoscope.inference.predictor.PixelModel` computes; for training with the random
    ``augmentation`` between scaling and normalisation (HED jitter works on [0, 1] floats).
    """
    from torchvision.transforms import v2

    from leukoscope.data.augment import RandomRot90, Standardise, ToUnit

    steps: list[v2.Transform] = []
    if augmentation is not None:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    steps.append(ToUnit())
    if augmentation is not None:
        steps += _augmentation_steps(augmentation)
    steps.append(Standardise(config.mean, config.std))
    return v2.Compose(steps)


def _augmentation_steps(a: Augmentation) -> list[v2.Transform]:
    """The random steps of ``a`` on [0, 1] float images, in acquisition order."""
    import torch
    from torchvision.transforms import v2

    from leukoscope.data.augment import (
        ChannelGain,
        HEDJitter,
        RandomGamma,
        RandomNoise,
        RandomScale,
        ToUnit,
    )

    steps: list[v2.Transform] = []
    if a.scale > 0:
        steps.append(RandomScale(a.scale))
    if a.hed_sigma > 0:
        steps.append(HEDJitter(a.hed_sigma))
    if a.colour_jitter > 0 or a.hue > 0:
        jitter = a.colour_jitter
        steps.append(
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=a.hue)
        )
    if a.channel_gain > 0:
        steps.append(ChannelGain(a.channel_gain))
    if a.gamma > 0:
        steps.append(RandomGamma(a.gamma))
    if a.grayscale > 0:
        steps.append(v2.RandomGrayscale(a.grayscale))
    if a.blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, a.blur))], p=0.5))
    if a.noise > 0:
        steps.append(RandomNoise(a.noise))
    if a.jpeg_quality < 100:
        jpeg = v2.JPEG((a.jpeg_quality, 100))
        steps += [v2.ToDtype(torch.uint8, scale=True), v2.RandomApply([jpeg], p=1 / 3), ToUnit()]
    return steps
