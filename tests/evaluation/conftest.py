"""The evaluation tests use the inference tests' tiny models."""

from tests.inference.conftest import tiny, untrained

__all__ = ["tiny", "untrained"]
