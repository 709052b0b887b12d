"""The evaluation tests use the inference tests' tiny models."""

from tests.inference.conftest import batchnorm, tiny, untrained

__all__ = ["batchnorm", "tiny", "untrained"]
