"""Sums and maxima over one axis, at BLAS speed on the shapes small networks have.

NumPy reduces a short axis slowly: summing the 10 classes of each of 1,257 rows takes it
about six times as long as the matrix-vector product ``x @ ones(10)``, which gives the
same sums. These helpers take that route for float32 and float64 arrays and fall back to
NumPy's reductions for everything else, so they work on any array.

>>> sum_keepdims(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=-1)
array([[3.],
       [7.]])
>>> sum_first_axis(np.array([[1.0, 2.0], [3.0, 4.0]]))
array([4., 6.])
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

_BLAS_TYPES = "fd"  # float32 and float64: the dtypes matmul hands to BLAS


@functools.lru_cache(maxsize=64)
def shared_ones(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read-only array of ones, made once per shape and dtype and shared by every caller."""
    ones = np.ones(shape, dtype)
    ones.flags.writeable = False  # shared by every call with this shape
    return ones


def sum_keepdims(x: np.ndarray, axis: int) -> np.ndarray:
    """``x.sum(axis=axis, keepdims=True)`` for one axis."""
    if x.dtype.char in _BLAS_TYPES and x.ndim and axis in (-1, x.ndim - 1):
        return x @ shared_ones((x.shape[-1], 1), x.dtype)  # a column of ones keeps the summed axis
    return np.add.reduce(x, axis=axis, keepdims=True)


def sum_first_axis(x: Any) -> Any:
    """``x.sum(axis=0)``; ``x`` may also be a Tensor (under ``create_graph``), summed as usual."""
    if type(x) is np.ndarray and x.dtype.char in _BLAS_TYPES and x.ndim == 2:
        return shared_ones((x.shape[0],), x.dtype) @ x
    return x.sum(axis=0)


@functools.lru_cache(maxsize=8)
def _safe_spread(dtype: np.dtype) -> float:
    # Logits within this of the largest one keep exp(logit - largest) a normal number,
    # with the result's rounding error at most a few times that of the per-row shift.
    return min(32.0, -0.5 * float(np.log(np.finfo(dtype).tiny)))


def softmax_shift(x: np.ndarray, axis: int) -> np.ndarray | np.floating:
    """What to subtract from ``x`` before ``exp`` so softmax over ``axis`` cannot overflow.

    The maximum of each row along ``axis``; or, when all of ``x`` lies within a narrow
    range (as logits usually do), the one maximum of the whole array, which takes a
    fraction of the time of a maximum per row.

    >>> softmax_shift(np.array([[1.0, 2.0], [0.0, 5.0]]), axis=-1)
    np.float64(5.0)
    >>> softmax_shift(np.array([[1.0, 2.0], [0.0, 500.0]]), axis=-1)
    array([[  2.],
           [500.]])
    """
    if x.size and x.dtype.kind == "f":
        largest = np.maximum.reduce(x, axis=None)
        if largest - np.minimum.reduce(x, axis=None) <= _safe_spread(x.dtype):  # False for inf and nan
            return largest
    return np.maximum.reduce(x, axis=axis, keepdims=True)
