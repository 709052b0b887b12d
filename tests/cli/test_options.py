"""The command line's choices are those of the library (spelt out there for a fast start)."""

from __future__ import annotations

from enum import Enum

import pytest

from leukoscope.cli import evaluate, export, options
from leukoscope.data.download import DATASETS
from leukoscope.data.resize import FORMATS
from leukoscope.data.split import SPLITS
from leukoscope.evaluation.metrics import BOOTSTRAP_RESAMPLES
from leukoscope.inference import export as onnx_export
from leukoscope.inference import runtime
from leukoscope.inference.abstention import CONFIDENCE_SCORES, DEFAULT_CONFIDENCE
from leukoscope.models import list_archs
from leukoscope.models.registry import WEIGHTS
from leukoscope.reports.differential import RENDERERS
from leukoscope.training.profiles import PROFILES


@pytest.mark.parametrize(
    ("choice", "library"),
    [
        (options.Arch, list_archs()),
        (options.Weights, WEIGHTS),
        (options.Profile, PROFILES),
        (options.Backend, runtime.BACKENDS),
        (options.Views, runtime.VIEW_COUNTS),
        (options.Split, SPLITS),
        (options.Confidence, CONFIDENCE_SCORES),
        (options.Calibration, onnx_export.CALIBRATIONS),
        (options.ImageFormat, FORMATS),
        (options.ReportFormat, RENDERERS),
        (options.Dataset, DATASETS),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_choices_match_the_library(choice: type[Enum], library: object) -> None:
    assert [member.value for member in choice] == list(library)  # type: ignore[call-overload]


def test_defaults_match_the_library() -> None:
    assert options.Confidence.MSP == DEFAULT_CONFIDENCE
    assert evaluate.BOOTSTRAP_RESAMPLES == BOOTSTRAP_RESAMPLES
    assert (
        export.OPSET == onnx_export.OPSET
        and (export.INT8_NAME, export.ONNX_NAME) == runtime.FOLDER_EXPORTS
    )
