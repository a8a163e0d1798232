"""The BLAS-backed reductions give NumPy's sums, and the softmax shift never costs accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import microtensor as mt
from microtensor.reductions import softmax_shift, sum_first_axis, sum_keepdims

DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64])


def arrays(min_dims: int = 0, max_dims: int = 3):
    return DTYPES.flatmap(lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=6),
        elements=st.integers(-100, 100)))


@settings(max_examples=200, deadline=None)
@given(x=arrays(min_dims=1), data=st.data())
def test_sum_keepdims_is_numpys_sum(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    expected = x.sum(axis=axis, keepdims=True)
    actual = sum_keepdims(x, axis)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)  # integers-valued entries: exact in any order


@settings(max_examples=200, deadline=None)
@given(x=arrays(min_dims=1))
def test_sum_first_axis_is_numpys_sum(x):
    expected = x.sum(axis=0)
    actual = sum_first_axis(x)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def test_sum_first_axis_sums_tensors_as_tensors():
    x = mt.Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    total = sum_first_axis(x)
    assert isinstance(total, mt.Tensor)
    np.testing.assert_array_equal(total.data, [6.0, 9.0])


def test_sums_keep_inf_and_nan_as_numpy_does():
    x = np.array([[np.inf, 1.0], [-np.inf, np.nan], [np.inf, -np.inf]])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(sum_keepdims(x, -1), x.sum(axis=-1, keepdims=True))
        np.testing.assert_array_equal(sum_first_axis(x), x.sum(axis=0))


def _per_row_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("spread", [1.0, 20.0, 31.0, 33.0, 500.0, 1e4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_softmax_is_as_accurate_as_the_per_row_shift(spread, dtype):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-spread / 2, spread / 2, (50, 7))).astype(dtype)
    exact = _per_row_log_softmax(x.astype(np.longdouble))
    ours = mt.log_softmax(mt.Tensor(x)).data
    per_row = _per_row_log_softmax(x)
    assert ours.dtype == dtype
    # Never more than a few roundings worse than the textbook per-row computation.
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(ours - exact)) <= np.max(np.abs(per_row - exact)) + 40 * eps


def test_softmax_shift_falls_back_to_the_row_maximum_when_the_logits_spread_or_are_not_finite():
    assert np.ndim(softmax_shift(np.array([[0.0, 1.0], [2.0, 3.0]]), -1)) == 0
    for x in ([[0.0, 1.0], [2.0, 300.0]], [[0.0, -np.inf], [1.0, 2.0]], [[np.nan, 0.0], [1.0, 2.0]]):
        x = np.array(x)
        np.testing.assert_array_equal(softmax_shift(x, -1), x.max(axis=-1, keepdims=True))


def test_softmax_of_masked_logits_is_exact():
    logits = mt.Tensor([[0.0, -np.inf, 1.0], [5.0, 5.0, -np.inf]], requires_grad=True)
    probs = mt.softmax(logits).data
    np.testing.assert_allclose(probs, [[1 / (1 + np.e), 0.0, np.e / (1 + np.e)], [0.5, 0.5, 0.0]], rtol=1e-15)
