"""Softmax and log-sum-exp of logits, in NumPy.

``scipy.special`` has both, but importing it takes about 0.35 s on two cores (it loads SciPy's
array-API layer), a sixth of a one-image ``predict`` on the AMD EPYC with AVX2 only
(``benchmarks/inference.py``), and every prediction needs them. These are the same
max-shifted formulas, checked against ``scipy.special`` by ``tests/inference/test_softmax.py``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def logsumexp(values: ArrayLike, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(values)))`` along ``axis``, without overflow.

    >>> round(float(logsumexp(np.array([1000.0, 1000.0]))), 3)
    1000.693
    """
    values = np.asarray(values)
    peak = np.max(values, axis=axis, keepdims=True)
    total = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True)) + peak
    return np.squeeze(total, axis=axis)


def softmax(values: ArrayLike, axis: int = -1) -> np.ndarray:
    """``exp(values)`` normalised to sum to 1 along ``axis``, without overflow.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    values = np.asarray(values)
    raised = np.exp(values - np.max(values, axis=axis, keepdims=True))
    return raised / np.sum(raised, axis=axis, keepdims=True)
