"""Numerical edge cases: huge logits, -inf logits, saturated activations, log(0) and empty
reductions give the mathematically right values (finite wherever the maths is finite), in
float32 and float64 alike, and no NumPy warning reaches the user."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import microtensor as mt
from microtensor import Tensor
from nn import functional as F

pytestmark = pytest.mark.filterwarnings("error")
DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}

HUGE = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4 + 3.0, -1e4 + 1.0], [5e3, 1e4, 1e4]])
MASKED = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, -np.inf], [0.5, -0.5, -np.inf]])
LABELS = np.array([0, 1, 2])
LABELS_AWAY_FROM_INF = np.array([0, 1, 0])


def reference_log_softmax(x: np.ndarray) -> np.ndarray:
    """Independent of the engine: log-sum-exp by pairwise logaddexp, in float64."""
    x = np.asarray(x, np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def reference_cross_entropy_grad(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    one_hot = np.eye(x.shape[1])[target] if target.ndim == 1 else target
    return (np.exp(reference_log_softmax(x)) - one_hot) / len(x)


def leaf(values: np.ndarray, dtype) -> Tensor:
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


def targets(kind: str, labels: np.ndarray) -> np.ndarray:
    return labels if kind == "labels" else np.eye(3)[labels]


# -- logits of magnitude 1e4 --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_of_logits_of_magnitude_1e4_is_finite_and_exact(dtype):
    x = leaf(HUGE, dtype)
    out = x.log_softmax()
    upstream = np.arange(9.0).reshape(3, 3).astype(dtype)
    out.backward(upstream)
    assert out.dtype == dtype and x.grad.dtype == dtype
    np.testing.assert_allclose(out.data, reference_log_softmax(HUGE), **TOLERANCE[dtype])
    expected = upstream - np.exp(reference_log_softmax(HUGE)) * upstream.sum(-1, keepdims=True)
    np.testing.assert_allclose(x.grad, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_logits_of_magnitude_1e4_is_finite_and_sums_to_one(dtype):
    x = leaf(HUGE, dtype)
    out = x.softmax()
    (out * np.arange(3.0).astype(dtype)).sum().backward()
    np.testing.assert_allclose(out.data, np.exp(reference_log_softmax(HUGE)), **TOLERANCE[dtype])
    np.testing.assert_allclose(out.data.sum(-1), 1.0, rtol=1e-6)
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "one-hot"])
def test_cross_entropy_of_logits_of_magnitude_1e4_is_finite_with_gradient_softmax_minus_target(dtype, kind):
    x = leaf(HUGE, dtype)
    loss = F.cross_entropy(x, targets(kind, LABELS))
    loss.backward()
    expected_loss = -reference_log_softmax(HUGE)[np.arange(3), LABELS].mean()
    assert loss.dtype == dtype and np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-6)
    np.testing.assert_allclose(x.grad, reference_cross_entropy_grad(HUGE, LABELS), **TOLERANCE[dtype])


# -- logits of -inf (masked classes) ------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_is_minus_inf_exactly_at_minus_inf_logits_with_finite_gradients(dtype):
    x = leaf(MASKED, dtype)
    out = x.log_softmax()
    out.backward(np.ones((3, 3), dtype))
    finite = np.isfinite(MASKED)
    assert np.array_equal(np.isfinite(out.data), finite)
    np.testing.assert_allclose(out.data[finite], reference_log_softmax(MASKED)[finite], **TOLERANCE[dtype])
    # d(sum_i logp_i)/dx_j = 1 - C p_j, and p_j = 0 at a -inf logit
    np.testing.assert_allclose(x.grad, 1 - 3 * np.exp(reference_log_softmax(MASKED)), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_gives_zero_probability_and_zero_gradient_at_minus_inf_logits(dtype):
    x = leaf(MASKED, dtype)
    out = x.softmax()
    (out * np.arange(9.0).reshape(3, 3).astype(dtype)).sum().backward()
    assert np.all(out.data[~np.isfinite(MASKED)] == 0)
    assert np.all(x.grad[~np.isfinite(MASKED)] == 0) and np.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "one-hot"])
@pytest.mark.parametrize("route", ["cross_entropy", "nll_loss(log_softmax)"])
def test_cross_entropy_is_finite_when_only_ruled_out_classes_have_minus_inf_logits(dtype, kind, route):
    x = leaf(MASKED, dtype)
    target = targets(kind, LABELS_AWAY_FROM_INF)
    loss = F.cross_entropy(x, target) if route == "cross_entropy" else F.nll_loss(x.log_softmax(), target)
    loss.backward()
    expected_loss = -reference_log_softmax(MASKED)[np.arange(3), LABELS_AWAY_FROM_INF].mean()
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-6)
    np.testing.assert_allclose(x.grad, reference_cross_entropy_grad(MASKED, LABELS_AWAY_FROM_INF),
                               **TOLERANCE[dtype])


@pytest.mark.parametrize("kind", ["labels", "one-hot"])
def test_a_minus_inf_logit_at_the_true_class_gives_an_infinite_loss_but_a_finite_gradient(kind):
    x = leaf(MASKED, np.float64)
    loss = F.cross_entropy(x, targets(kind, np.array([1, 1, 2])))  # rows 0 and 2: the label's logit is -inf
    loss.backward()
    assert loss.item() == np.inf
    np.testing.assert_allclose(x.grad, reference_cross_entropy_grad(MASKED, np.array([1, 1, 2])), atol=1e-12)


def test_second_derivatives_of_cross_entropy_stay_finite_next_to_minus_inf_logits():
    x = leaf(MASKED, np.float64)
    (g,) = mt.grad(F.cross_entropy(x, targets("one-hot", LABELS_AWAY_FROM_INF)), x, create_graph=True)
    (g * g).sum().backward()
    assert np.isfinite(x.grad).all()
    assert np.all(x.grad[~np.isfinite(MASKED)] == 0)


# -- saturated activations ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, saturated", [("sigmoid", [0.0, 1.0]), ("tanh", [-1.0, 1.0])])
def test_sigmoid_and_tanh_at_plus_minus_1000_saturate_with_zero_gradient(dtype, name, saturated):
    x = leaf([-1000.0, 1000.0], dtype)
    out = getattr(x, name)()
    out.sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype
    np.testing.assert_array_equal(out.data, saturated)
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_keeps_full_relative_precision_deep_in_its_lower_tail(dtype):
    x = np.array([-30.0, -80.0], dtype)
    expected = np.exp(np.array([-30.0, -80.0])) / (1 + np.exp(np.array([-30.0, -80.0])))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(mt.sigmoid(Tensor(x)).data, expected, rtol=rtol)


# -- log of zero --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_of_zero_is_minus_inf_and_its_gradient_plus_inf(dtype):
    x = leaf([0.0, 2.0], dtype)
    out = x.log()
    out.sum().backward()
    np.testing.assert_array_equal(out.data, np.array([-np.inf, np.log(2.0)], dtype))
    np.testing.assert_array_equal(x.grad, np.array([np.inf, 0.5], dtype))


def test_log_of_a_negative_number_is_nan_without_a_warning():
    assert np.isnan(Tensor([-1.0]).log().item())


def test_numerical_grad_and_gradcheck_report_log_of_zero_instead_of_crashing():
    x = Tensor([0.0, 1.0], requires_grad=True, name="x")
    (numeric,) = mt.numerical_grad(lambda t: t.log().sum(), [x])
    report = mt.gradcheck(lambda t: t.log().sum(), [x])
    assert numeric.shape == (2,) and not np.isfinite(numeric[0])
    assert not report and "log(0)" in str(report)


def test_gradcheck_of_a_scalar_output_runs():
    # It used to fail inside mt.grad, which took a NumPy scalar upstream gradient for a sequence.
    x = Tensor([0.5, 1.0], requires_grad=True, name="x")
    assert mt.gradcheck(lambda t: (t * t.log()).sum(), [x])


def test_check_tools_at_log_of_zero_leak_no_numpy_warning():
    x = Tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mt.numerical_grad(lambda t: t.log().sum(), [x])
        mt.gradcheck(lambda t: t.log().sum(), [x])


# -- empty reductions ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_of_an_empty_tensor_is_nan_without_a_warning_and_its_gradient_empty(dtype):
    x = leaf(np.ones((0, 3)), dtype)
    whole, per_column, per_row = x.mean(), x.mean(axis=0), x.mean(axis=1)
    (whole + per_column.sum() + per_row.sum()).backward()
    assert np.isnan(whole.item()) and whole.dtype == dtype
    assert np.isnan(per_column.data).all() and per_column.shape == (3,)
    assert per_row.shape == (0,)
    assert x.grad.shape == (0, 3) and x.grad.dtype == dtype


def test_sum_of_an_empty_tensor_is_zero():
    assert Tensor(np.ones((0, 3))).sum().item() == 0.0
