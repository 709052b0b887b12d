"""Option types and definitions shared by several commands.

Every command module imports its heavy dependencies (torch, timm, scikit-learn) inside the
command, so that ``leukoscope --help`` and usage errors answer at once. The choices below are
therefore spelt out here rather than read from the modules that define them (importing
``leukoscope.models`` alone takes seconds); ``tests/cli/test_options.py`` fails when a library
list and its enum here differ.
"""

from __future__ import annotations

import inspect
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import Context, Parameter
from typer.core import TyperCommand, TyperGroup, TyperOption


class FlagOption(TyperOption):
    """An on/off flag, shown without a value type (Typer shows ``<bool>`` as if it took one)."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None


def _bare_flags(params: list[Parameter]) -> list[Parameter]:
    """``params`` with every flag made a :class:`FlagOption` (Typer builds the options itself,
    so their class is changed in place, once; FlagOption adds no state)."""
    for param in params:
        if type(param) is TyperOption and param.is_flag:
            param.__class__ = FlagOption
    return params


def unwrap(text: str | None) -> str | None:
    """Docstring paragraphs as single lines: Typer's Rich help keeps the source's line breaks,
    which would break sentences in the middle of the terminal's line."""
    if text is None:
        return None
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


class Command(TyperCommand):
    """A command whose help shows flags without ``<bool>`` and docstrings as flowing text."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.help = unwrap(self.help)

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _bare_flags(super().get_params(ctx))


class Group(TyperGroup):
    """A command group whose help shows flags without ``<bool>`` and docstrings as flowing
    text."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.help = unwrap(self.help)

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _bare_flags(super().get_params(ctx))


class Arch(StrEnum):
    """The backbones of ``leukoscope.models.list_archs()``."""

    SQUEEZENET1_1 = "squeezenet1_1"
    RESNET50 = "resnet50"
    INCEPTION_V3 = "inception_v3"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"


class Weights(StrEnum):
    """``leukoscope.models.registry.WEIGHTS``: ImageNet initialisation or none."""

    IMAGENET = "imagenet"
    NONE = "none"


class Profile(StrEnum):
    """The training recipes of ``leukoscope.training.profiles.PROFILES``."""

    FAST = "fast"
    FAST_ROBUST = "fast-robust"
    FULL = "full"
    FULL_ROBUST = "full-robust"
    ROBUST_FINETUNE = "robust-finetune"
    GRAY_FINETUNE = "gray-finetune"


class Backend(StrEnum):
    """``leukoscope.inference.runtime.BACKENDS``."""

    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"
    OPENVINO = "openvino"


class Views(IntEnum):
    """``leukoscope.inference.runtime.VIEW_COUNTS``: test-time views."""

    ONE = 1
    FOUR = 4
    EIGHT = 8


class Split(StrEnum):
    """``leukoscope.data.split.SPLITS``."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Confidence(StrEnum):
    """``leukoscope.inference.abstention.CONFIDENCE_SCORES``."""

    MSP = "msp"
    ENERGY = "energy"


class Calibration(StrEnum):
    """The int8 calibration methods of ``leukoscope.inference.export.CALIBRATIONS``."""

    PERCENTILE = "percentile"
    MINMAX = "minmax"


class ImageFormat(StrEnum):
    """``leukoscope.data.resize.FORMATS``: formats of a resized copy."""

    WEBP = "webp"
    JPEG = "jpeg"
    PNG = "png"


class Dataset(StrEnum):
    """The published datasets of ``leukoscope.data.download.DATASETS``."""

    PBC = "pbc"


class ReportFormat(StrEnum):
    """``leukoscope.reports.differential.RENDERERS``: formats of a differential report."""

    MD = "md"
    HTML = "html"


BACKEND_HELP = (
    "auto runs the export beside the model (model.int8.onnx, else model.onnx) in ONNX Runtime "
    "(EfficientNets: OpenVINO, unless predict or differential has fewer than 32 cell images) "
    "or, if not installed, the other; without an export, PyTorch. "
    "onnx is ONNX Runtime."
)
VIEWS_HELP = (
    "Test-time views: predict from the average of the image turned by 90-degree steps "
    "(8: and mirrored); that many times slower. Stored in the model card."
)
DATA_HELP = "Folder of class folders (default: $LEUKOSCOPE_DATA or ../shared/data/pbc)."
DB_HELP = (
    "SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/db "
    "(default: SQLite file in the state folder)."
)
STATE_DIR_HELP = "Folder for the default SQLite database (default: ~/.local/share/leukoscope)."

FIELDS_HELP = (
    "The images are fields (microscope photos of a smear): find every white cell, cut it out as "
    "the model's training images were and classify it; cells cut by an image's edge are flagged "
    "for review."
)
FieldsOption = Annotated[bool, typer.Option("--fields", help=FIELDS_HELP)]
RENORMALISE_HELP = (
    "When the cell images look unlike the model's training data as a sample (far more cells "
    "flagged uncertain than expected), re-estimate the model's normalisation statistics on them "
    "and classify them again (models with BatchNorm: the EfficientNets). --no-renormalise: the "
    "model as trained."
)
RenormaliseOption = Annotated[
    bool, typer.Option("--renormalise/--no-renormalise", help=RENORMALISE_HELP)
]
ModelDir = Annotated[Path, typer.Option("--model", help="Model directory (or its .onnx export).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.")]
Workers = Annotated[int, typer.Option("--workers", min=0, help="Image-decoding threads.")]
BackendOption = Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP)]
DataOption = Annotated[Path | None, typer.Option("--data", help=DATA_HELP)]
DbOption = Annotated[str | None, typer.Option("--db", envvar="LEUKOSCOPE_DB_URL", help=DB_HELP)]
StateDirOption = Annotated[
    Path | None, typer.Option("--data-dir", envvar="LEUKOSCOPE_DATA_DIR", help=STATE_DIR_HELP)
]
