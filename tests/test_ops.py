"""Every op's tape gradient against finite differences of an independent NumPy reference,
and against PyTorch when it is installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import numeric_vjp, requires_torch, torch

import microtensor as mt
from microtensor import Tensor


def _ref_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# name -> (engine function, NumPy reference, input shapes, value transform for the domain)
UNARY = {
    "neg": (lambda x: -x, lambda x: -x),
    "relu": (mt.relu, lambda x: np.maximum(x, 0)),
    "sigmoid": (mt.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (mt.tanh, np.tanh),
    "exp": (mt.exp, np.exp),
    "log": (lambda x: mt.log(x * x + 0.5), lambda x: np.log(x * x + 0.5)),
    "log_softmax": (lambda x: x.log_softmax(axis=-1), _ref_log_softmax),
    "log_softmax_axis0": (lambda x: mt.log_softmax(x, axis=0), lambda x: _ref_log_softmax(x, 0)),
    "softmax": (lambda x: x.softmax(), lambda x: np.exp(_ref_log_softmax(x))),
    "sum": (lambda x: x.sum(), np.sum),
    "sum_axis0": (lambda x: x.sum(axis=0), lambda x: x.sum(axis=0)),
    "sum_keepdims": (lambda x: x.sum(axis=-1, keepdims=True), lambda x: x.sum(-1, keepdims=True)),
    "mean": (lambda x: x.mean(), np.mean),
    "mean_axis1": (lambda x: x.mean(axis=1), lambda x: x.mean(axis=1)),
    "max": (lambda x: x.max(), np.max),
    "max_axis0": (lambda x: x.max(axis=0), lambda x: x.max(axis=0)),
    "max_axis_keepdims": (lambda x: x.max(axis=1, keepdims=True), lambda x: x.max(1, keepdims=True)),
    "reshape": (lambda x: x.reshape(-1), lambda x: x.reshape(-1)),
    "reshape_tuple": (lambda x: x.reshape((x.shape[1], -1)), lambda x: x.reshape(x.shape[1], -1)),
    "transpose": (lambda x: x.T, lambda x: x.T),
    "transpose_axes": (lambda x: x.transpose(1, 0), lambda x: x.transpose(1, 0)),
    "getitem_slice": (lambda x: x[1:, ::2], lambda x: x[1:, ::2]),
    "getitem_int": (lambda x: x[0], lambda x: x[0]),
    "getitem_pairs": (lambda x: x[np.arange(3), np.array([0, 2, 2])],
                      lambda x: x[np.arange(3), np.array([0, 2, 2])]),
    "getitem_repeated": (lambda x: x[np.array([0, 0, 2])], lambda x: x[np.array([0, 0, 2])]),
    "pow_scalar": (lambda x: x ** 3, lambda x: x ** 3),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    "scalar_mix": (lambda x: (2.0 - x) / 3.0 + 1.0 * x, lambda x: (2.0 - x) / 3.0 + x),
    "rtruediv": (lambda x: 1.0 / (x * x + 1), lambda x: 1.0 / (x * x + 1)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_op_gradient_matches_finite_differences(name, rng):
    engine, reference = UNARY[name]
    x_val = rng.standard_normal((3, 4))
    x = Tensor(x_val, requires_grad=True)
    out = engine(x)
    upstream = rng.standard_normal(out.shape)
    np.testing.assert_allclose(out.data, reference(x_val), rtol=1e-12, atol=1e-12)
    out.backward(upstream)
    (expected,) = numeric_vjp(reference, [x_val], upstream)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-6, atol=1e-8)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
    "pow": (lambda a, b: (a * a + 1) ** b, lambda a, b: (a * a + 1) ** b),
}
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)),
                    ((4,), (2, 3, 4)), ((), (3,)), ((1, 1), (2, 3))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_op_gradient_sums_back_over_broadcast_axes(name, shapes, rng):
    engine, reference = BINARY[name]
    a_val, b_val = (rng.standard_normal(s) for s in shapes)
    a, b = Tensor(a_val, requires_grad=True), Tensor(b_val, requires_grad=True)
    out = engine(a, b)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    ga, gb = numeric_vjp(reference, [a_val, b_val], upstream)
    np.testing.assert_allclose(a.grad, ga, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, gb, rtol=1e-6, atol=1e-8)
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


MATMUL_SHAPES = [((3, 4), (4, 2)), ((4,), (4,)), ((4,), (4, 2)), ((3, 4), (4,)),
                 ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (3, 4, 2)),
                 ((4,), (2, 4, 3)), ((2, 3, 4), (4,))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_gradient_for_1d_2d_and_batched_operands(shapes, rng):
    a_val, b_val = (rng.standard_normal(s) for s in shapes)
    a, b = Tensor(a_val, requires_grad=True), Tensor(b_val, requires_grad=True)
    out = a @ b
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    ga, gb = numeric_vjp(np.matmul, [a_val, b_val], upstream)
    np.testing.assert_allclose(a.grad, ga, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, gb, rtol=1e-6, atol=1e-8)


def test_ndarray_on_the_left_of_a_tensor_dispatches_to_the_tensor(rng):
    w = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    x = rng.standard_normal((4, 3))
    out = x @ w
    assert isinstance(out, Tensor) and out.requires_grad
    out.sum().backward()
    np.testing.assert_allclose(w.grad, x.T @ np.ones((4, 2)))
    assert isinstance(np.ones(3) + Tensor(np.ones(3)), Tensor)
    assert isinstance(2.0 - Tensor(1.0), Tensor)


def test_max_splits_the_gradient_evenly_between_ties():
    x = Tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5])


def test_relu_gradient_at_zero_is_zero_like_pytorch():
    x = Tensor([-1.0, 0.0, 2.0], requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


def test_pow_at_base_zero_with_exponent_zero_has_the_limit_gradient_like_pytorch():
    # Polynomial features x ** [0, 1, 2, 3]: d(x**0)/dx is 0, also at x = 0 (not 0 * 0**-1 = nan).
    x = Tensor([[0.0], [1.0]], requires_grad=True)
    (x ** np.arange(4.0)).sum().backward()
    np.testing.assert_array_equal(x.grad.ravel(), [1.0, 6.0])


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 3.0, 0.5, -1.0])
def test_first_and_second_derivatives_of_pow_at_zero_match_pytorch_limits(exponent):
    x = Tensor([0.0, 2.0], requires_grad=True)
    with np.errstate(all="ignore"):  # 0 ** -1 in the forward; the rules' inf and nan, masked below
        (first,) = mt.grad((x ** exponent).sum(), x, create_graph=True)
        (second,) = mt.grad(first.sum(), x)
        b, values = exponent, np.array([0.0, 2.0])
        expected_first = np.where(b == 0, 0.0, b * values ** (b - 1))
        expected_second = np.where(b * (b - 1) == 0, 0.0, b * (b - 1) * values ** (b - 2))
    np.testing.assert_array_equal(first.data, expected_first)
    np.testing.assert_array_equal(second, expected_second)


@requires_torch
def test_pow_gradients_with_zero_bases_and_exponents_match_pytorch():
    base, exponent = np.array([0.0, 0.0, 0.0, 1.5, 2.0]), np.array([0.0, 1.0, 2.0, 0.0, 3.0])
    x = Tensor(base, requires_grad=True)
    (first,) = mt.grad((x ** exponent).sum(), x, create_graph=True)
    (second,) = mt.grad(first.sum(), x)
    tx = torch.tensor(base, requires_grad=True)
    (tfirst,) = torch.autograd.grad((tx ** torch.tensor(exponent)).sum(), tx, create_graph=True)
    (tsecond,) = torch.autograd.grad(tfirst.sum(), tx)
    np.testing.assert_allclose(first.data, tfirst.detach().numpy())
    # PyTorch's second derivative of x ** 0 at 0 is nan (its mask is not differentiated); the
    # limit, 0, is what x ** 0 = 1 gives.
    varies = exponent != 0
    np.testing.assert_allclose(second[varies], tsecond.numpy()[varies])
    np.testing.assert_array_equal(second[~varies], 0.0)


@pytest.mark.parametrize("axes", [(1, 2, 0), (2, 0, 1), (0, 2, 1)])
def test_transpose_by_a_permutation_that_is_not_its_own_inverse(axes, rng):
    x_val = rng.standard_normal((2, 3, 4))
    x = Tensor(x_val, requires_grad=True)
    out = x.transpose(*axes)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    (expected,) = numeric_vjp(lambda v: np.transpose(v, axes), [x_val], upstream)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-6, atol=1e-8)
    if torch is not None:
        tx = torch.tensor(x_val, requires_grad=True)
        tx.permute(*axes).backward(torch.tensor(upstream))
        np.testing.assert_allclose(x.grad, tx.grad.numpy())


def test_the_exponents_gradient_at_base_zero_is_zero_like_pytorch():
    # d(a**b)/db = a**b * log(a): its limit at a = 0 is 0, not 0 * log(0) = nan.
    b = Tensor([2.0, 3.0], requires_grad=True)
    mt.pow(np.array([0.0, 2.0]), b).sum().backward()
    np.testing.assert_allclose(b.grad, [0.0, 8 * np.log(2.0)])


def test_an_op_without_vjps_takes_its_forwards_leading_arguments_as_inputs():
    sign = mt.Op("sign", lambda x: np.sign(x))
    clipped = mt.Op("clipped", lambda x, low=0.0: np.maximum(x, low))
    x = Tensor([-2.0, 3.0], requires_grad=True)
    assert (sign.arity, clipped.arity, mt.ops.greater.arity) == (1, 1, 2)
    np.testing.assert_array_equal(sign(x).data, [-1.0, 1.0])
    np.testing.assert_array_equal(clipped(x, 1.0).data, [1.0, 3.0])  # the extra argument is low
    assert not sign(x).requires_grad


def test_elementwise_ops_refuse_extra_arguments_instead_of_writing_into_them():
    # NumPy's ufuncs would take the extra argument as out= and overwrite it.
    a, buffer = Tensor(np.ones((2, 3)), requires_grad=True), np.zeros((2, 3))
    for call in (lambda: mt.neg(a, buffer), lambda: mt.exp(a, buffer), lambda: mt.add(a, a, buffer),
                 lambda: mt.mul(a, a, out=buffer), lambda: mt.add(a, a, where=True)):
        with pytest.raises(TypeError, match=r"^(neg|exp|add|mul): takes (1|2) input\(s\) and no parameters"):
            call()
    np.testing.assert_array_equal(buffer, 0.0)
    with pytest.raises(TypeError, match=r"^sum: takes 1 input\(s\) and the parameters axis, keepdims"):
        mt.sum(a, 0, True, 5)


def test_comparisons_give_boolean_tensors_that_never_require_grad():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    for result in (x > 2, x < 2, x >= 2, x <= 2, x == 2, x != 2):
        assert result.dtype == bool and not result.requires_grad and result.is_leaf
    np.testing.assert_array_equal((x > 1.5).data, [False, True, True])


def test_log_softmax_and_softmax_of_huge_logits_stay_finite():
    logits = Tensor([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]], requires_grad=True)
    logp = logits.log_softmax()
    assert np.all(np.isfinite(logp.data[:, :2]))
    np.testing.assert_allclose(np.exp(logp.data).sum(axis=1), 1.0)
    np.testing.assert_allclose(logits.softmax().data.sum(axis=1), 1.0)
    logp[np.arange(2), np.array([0, 1])].sum().backward()
    assert np.all(np.isfinite(logits.grad))


def test_sigmoid_of_plus_minus_1000_gives_no_overflow_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mt.sigmoid(Tensor([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(out.data, [0.0, 0.5, 1.0])


def test_sigmoid_keeps_full_precision_in_the_far_tail():
    assert mt.sigmoid(Tensor(-40.0)).item() == pytest.approx(1 / (1 + np.exp(40.0)), rel=1e-12)


def test_float32_stays_float32_through_ops_and_gradients(rng):
    W = Tensor(rng.standard_normal((3, 2)), dtype=np.float32, requires_grad=True)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    loss = ((x @ W) * 2.0 + 1).sigmoid().log_softmax().mean()
    assert loss.dtype == np.float32
    loss.backward()
    assert W.grad.dtype == np.float32


# -- PyTorch as a second, independent reference -------------------------------------------
TORCH_UNARY = {
    "relu": torch and torch.relu, "sigmoid": torch and torch.sigmoid, "tanh": torch and torch.tanh,
    "exp": torch and torch.exp,
    "log_softmax": torch and (lambda x: torch.log_softmax(x, dim=-1)),
    "softmax": torch and (lambda x: torch.softmax(x, dim=-1)),
    "sum_axis0": torch and (lambda x: x.sum(dim=0)),
    "mean_axis1": torch and (lambda x: x.mean(dim=1)),
    "max_axis0": torch and (lambda x: x.amax(dim=0)),
    "transpose": torch and (lambda x: x.T),
    "getitem_pairs": torch and (lambda x: x[torch.arange(3), torch.tensor([0, 2, 2])]),
    "pow_scalar": torch and (lambda x: x ** 3),
    "neg": torch and (lambda x: -x),
    "log": torch and (lambda x: torch.log(x * x + 0.5)),
    "log_softmax_axis0": torch and (lambda x: torch.log_softmax(x, dim=0)),
    "sum": torch and (lambda x: x.sum()),
    "sum_keepdims": torch and (lambda x: x.sum(dim=-1, keepdim=True)),
    "mean": torch and (lambda x: x.mean()),
    "max": torch and (lambda x: x.amax()),
    "max_axis_keepdims": torch and (lambda x: x.amax(dim=1, keepdim=True)),
    "reshape": torch and (lambda x: x.reshape(-1)),
    "transpose_axes": torch and (lambda x: x.permute(1, 0)),
    "getitem_slice": torch and (lambda x: x[1:, ::2]),
    "getitem_int": torch and (lambda x: x[0]),
    "getitem_repeated": torch and (lambda x: x[torch.tensor([0, 0, 2])]),
    "rpow": torch and (lambda x: 2.0 ** x),
    "scalar_mix": torch and (lambda x: (2.0 - x) / 3.0 + 1.0 * x),
    "rtruediv": torch and (lambda x: 1.0 / (x * x + 1)),
}


@requires_torch
@pytest.mark.parametrize("name", sorted(TORCH_UNARY))
def test_unary_op_gradient_matches_pytorch(name, rng):
    engine, _ = UNARY[name]
    x_val = rng.standard_normal((3, 4))
    x = Tensor(x_val, requires_grad=True)
    out = engine(x)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    tx = torch.tensor(x_val, requires_grad=True)
    tout = TORCH_UNARY[name](tx)
    tout.backward(torch.tensor(upstream))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-10)


@requires_torch
@pytest.mark.parametrize("shapes", MATMUL_SHAPES + BROADCAST_SHAPES[:5], ids=str)
def test_binary_ops_match_pytorch(shapes, rng):
    a_val, b_val = (rng.standard_normal(s) for s in shapes)
    matmul_ok = a_val.ndim > 0 and b_val.ndim > 0 and a_val.shape[-1] == (
        b_val.shape[0] if b_val.ndim == 1 else b_val.shape[-2])
    pairs = [(lambda a, b: a * b + a / (b * b + 1) - b, None)]
    if matmul_ok:
        pairs.append((lambda a, b: a @ b, None))
    for fn, _ in pairs:
        try:
            np.broadcast_shapes(a_val.shape, b_val.shape)
        except ValueError:
            if fn is pairs[0][0]:
                continue
        a, b = Tensor(a_val, requires_grad=True), Tensor(b_val, requires_grad=True)
        ta, tb = (torch.tensor(v, requires_grad=True) for v in (a_val, b_val))
        out, tout = fn(a, b), fn(ta, tb)
        upstream = rng.standard_normal(out.shape)
        out.backward(upstream)
        tout.backward(torch.tensor(upstream))
        np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-10)


# -- the fused softmax cross-entropy ----------------------------------------------------------
def _ref_cross_entropy(logits, target):
    logp = _ref_log_softmax(logits)
    if target.ndim == 1:
        return -logp[np.arange(len(target)), target].mean()
    return -(target * logp).sum() / len(logits)


def _targets(rng):
    probabilities = rng.random((5, 4))
    probabilities /= probabilities.sum(1, keepdims=True)
    return {"labels": rng.integers(0, 4, 5), "probabilities": probabilities}


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_softmax_cross_entropy_matches_finite_differences(kind, rng):
    logits_val, target = rng.standard_normal((5, 4)) * 3, _targets(rng)[kind]
    logits = Tensor(logits_val, requires_grad=True)
    loss = mt.softmax_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(_ref_cross_entropy(logits_val, target), rel=1e-12)
    loss.backward(np.array(0.7))
    (expected,) = numeric_vjp(lambda x: _ref_cross_entropy(x, target), [logits_val], 0.7)
    np.testing.assert_allclose(logits.grad, expected, rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_gradient_with_respect_to_target_probabilities(rng):
    logits_val, target_val = rng.standard_normal((5, 4)), _targets(rng)["probabilities"]
    target = Tensor(target_val, requires_grad=True)
    mt.softmax_cross_entropy(Tensor(logits_val), target).backward()
    (expected,) = numeric_vjp(lambda t: _ref_cross_entropy(logits_val, t), [target_val], 1.0)
    np.testing.assert_allclose(target.grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_softmax_cross_entropy_second_derivatives_match_the_unfused_ops(kind, rng):
    logits_val, target = rng.standard_normal((5, 4)), _targets(rng)[kind]
    v = rng.standard_normal((5, 4))

    def hessian_times_v(loss_of):
        x = Tensor(logits_val, requires_grad=True)
        (g,) = mt.grad(loss_of(x), x, create_graph=True)
        return mt.grad((g * v).sum(), x)[0]

    def unfused(x):
        logp = x.log_softmax()
        picked = logp[np.arange(5), target] if target.ndim == 1 else logp * target
        return -picked.sum() / 5

    np.testing.assert_allclose(hessian_times_v(lambda x: mt.softmax_cross_entropy(x, target)),
                               hessian_times_v(unfused), rtol=1e-10, atol=1e-12)


def test_softmax_cross_entropy_names_the_shapes_it_cannot_use():
    with pytest.raises(ValueError, match=r"softmax_cross_entropy.*\(N, C\).*\(5, 4\), \(3,\)"):
        mt.softmax_cross_entropy(Tensor(np.zeros((5, 4))), np.zeros(3, dtype=int))


@requires_torch
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_softmax_cross_entropy_matches_pytorch(kind, rng):
    logits_val, target = rng.standard_normal((5, 4)) * 3, _targets(rng)[kind]
    logits = Tensor(logits_val, requires_grad=True)
    loss = mt.softmax_cross_entropy(logits, target)
    loss.backward()
    t_logits = torch.tensor(logits_val, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(target))
    t_loss.backward()
    assert loss.item() == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(logits.grad, t_logits.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- linear: x @ W + b as one node -------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(5, 3), (3,), (2, 5, 3)], ids=str)
def test_linear_gradients_match_finite_differences(x_shape, rng):
    x_val, w_val, b_val = rng.standard_normal(x_shape), rng.standard_normal((3, 4)), rng.standard_normal(4)
    x, w, b = (Tensor(v, requires_grad=True) for v in (x_val, w_val, b_val))
    out = mt.linear(x, w, b)
    reference = lambda x, w, b: x @ w + b
    np.testing.assert_allclose(out.data, reference(x_val, w_val, b_val), rtol=1e-12)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    for tensor, expected in zip((x, w, b), numeric_vjp(reference, [x_val, w_val, b_val], upstream)):
        np.testing.assert_allclose(tensor.grad, expected, rtol=1e-6, atol=1e-8)


def test_linear_with_a_bias_of_another_dtype_promotes_like_numpy():
    x = Tensor(np.ones((2, 3), dtype=np.float32))
    w = Tensor(np.ones((3, 2), dtype=np.float32), requires_grad=True)
    out = mt.linear(x, w, np.array([0.5, 0.25]))  # a float64 bias
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.data, [[3.5, 3.25], [3.5, 3.25]])


@requires_torch
def test_linear_matches_pytorch(rng):
    x_val, w_val, b_val = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    x, w, b = (Tensor(v, requires_grad=True) for v in (x_val, w_val, b_val))
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x_val, w_val, b_val))
    upstream = rng.standard_normal((5, 4))
    mt.linear(x, w, b).backward(upstream)
    torch.nn.functional.linear(tx, tw.T, tb).backward(torch.tensor(upstream))
    for mine, theirs in ((x, tx), (w, tw), (b, tb)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- functional forms take parameters by position too ------------------------------------------
@pytest.mark.parametrize("functional, method", [
    (lambda x: mt.sum(x, (0, 1)), lambda x: x.sum(axis=(0, 1))),
    (lambda x: mt.mean(x, 0, True), lambda x: x.mean(axis=0, keepdims=True)),
    (lambda x: mt.max(x, 1), lambda x: x.max(axis=1)),
    (lambda x: mt.log_softmax(x, 0), lambda x: x.log_softmax(axis=0)),
    (lambda x: mt.softmax(x, 0), lambda x: x.softmax(axis=0)),
    (lambda x: mt.reshape(x, (4, 3)), lambda x: x.reshape(4, 3)),
    (lambda x: mt.transpose(x, (1, 0)), lambda x: x.transpose(1, 0)),
], ids=["sum", "mean", "max", "log_softmax", "softmax", "reshape", "transpose"])
def test_functional_forms_bind_positional_parameters_like_the_methods(functional, method, rng):
    x_val = rng.standard_normal((3, 4))
    a, b = Tensor(x_val, requires_grad=True), Tensor(x_val, requires_grad=True)
    out_a, out_b = functional(a), method(b)
    np.testing.assert_array_equal(out_a.data, out_b.data)
    upstream = rng.standard_normal(out_a.shape)
    out_a.backward(upstream)
    out_b.backward(upstream)
    np.testing.assert_array_equal(a.grad, b.grad)
    assert str(mt.tape(out_a)) == str(mt.tape(out_b))  # recorded with the same parameters


def test_a_parameter_given_twice_or_too_many_arguments_is_a_type_error_naming_the_op():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"^sum: takes 1 input\(s\) and the parameters axis, keepdims"):
        mt.sum(x, 0, axis=1)
    with pytest.raises(TypeError, match=r"^sum: .* got 4 positional argument"):
        mt.sum(x, 0, False, 3)


def test_softmax_cross_entropy_with_rows_that_do_not_sum_to_one(rng):
    logits_val, target = rng.standard_normal((3, 4)), rng.random((3, 4)) * 2
    logits = Tensor(logits_val, requires_grad=True)
    mt.softmax_cross_entropy(logits, target).backward()
    (expected,) = numeric_vjp(lambda x: _ref_cross_entropy(x, target), [logits_val], 1.0)
    np.testing.assert_allclose(logits.grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shapes", [((3,), (3, 4), (1, 4)), ((3,), (3,), ()), ((2, 3), (3, 4), (2, 4))],
                         ids=str)
def test_linear_gives_what_x_at_w_plus_b_gives_for_any_bias_that_broadcasts(shapes, rng):
    x, w, b = (rng.standard_normal(s) for s in shapes)
    np.testing.assert_array_equal(mt.linear(x, w, b).data, x @ w + b)
