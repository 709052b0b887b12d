"""The NumPy softmax and log-sum-exp against scipy.special's, on logits of every scale."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from leukoscope.inference.softmax import logsumexp, softmax


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_match_scipy(scale: float, dtype: type, axis: int) -> None:
    logits = (np.random.default_rng(0).normal(size=(7, 5)) * scale).astype(dtype)
    expected, got = special.softmax(logits, axis=axis), softmax(logits, axis=axis)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        logsumexp(logits, axis=axis), special.logsumexp(logits, axis=axis), rtol=1e-6
    )


def test_do_not_overflow_where_exp_would() -> None:
    logits = np.array([[1000.0, 999.0], [-1000.0, -1001.0]])
    assert np.isfinite(softmax(logits)).all()
    np.testing.assert_allclose(softmax(logits)[0], softmax(logits)[1])
    np.testing.assert_allclose(
        logsumexp(logits), np.array([1000.0, -1000.0]) + np.log1p(np.exp(-1.0))
    )
