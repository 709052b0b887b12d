"""Fixtures of the inference tests: a trained, calibrated tiny model, an untrained one, and a
calibrated untrained one with BatchNorm layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference.tiny import (
    Tiny,
    build_batchnorm,
    build_tiny,
    build_untrained,
    squeezenet_h5,
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """Trained on synthetic cells and calibrated (needs the ImageNet SqueezeNet weights)."""
    weights = squeezenet_h5()
    if weights is None:
        pytest.skip("keras-squeezenet ImageNet weights not found (set LEUKOSCOPE_WEIGHTS_DIR)")
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny", weights)


@pytest.fixture(scope="session")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model directory (no calibration, no export)."""
    return build_untrained(tmp_path_factory.mktemp("untrained"))


@pytest.fixture(scope="session")
def batchnorm(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """An untrained EfficientNet-Lite0 at 32 px, calibrated on the tiny model's manifest."""
    return build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm")
