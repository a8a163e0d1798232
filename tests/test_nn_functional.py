"""nn.functional: cross_entropy, nll_loss, mse_loss and l2_penalty against NumPy formulas and torch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, torch
from hypothesis import given, settings
from hypothesis import strategies as st

import microtensor as mt
from nn import functional as F


def numpy_cross_entropy(logits, labels):
    """Independent reference: softmax probabilities, then mean -log p[label]."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels]))


def one_hot(labels, classes):
    return np.eye(classes)[labels]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_cross_entropy_with_int_labels_matches_numpy(n, c, seed):
    rng = np.random.default_rng(seed)
    logits, labels = rng.normal(scale=3, size=(n, c)), rng.integers(0, c, size=n)
    loss = F.cross_entropy(mt.Tensor(logits), labels)
    assert abs(loss.item() - numpy_cross_entropy(logits, labels)) < 1e-12


def test_cross_entropy_with_one_hot_equals_int_labels_value_and_gradient():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    a, b = mt.Tensor(logits, requires_grad=True), mt.Tensor(logits, requires_grad=True)
    loss_int, loss_hot = F.cross_entropy(a, labels), F.cross_entropy(b, one_hot(labels, 4))
    loss_int.backward()
    loss_hot.backward()
    assert abs(loss_int.item() - loss_hot.item()) < 1e-14
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-15)


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)
    x = mt.Tensor(logits, requires_grad=True)
    F.cross_entropy(x, labels).backward()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.grad, (p - one_hot(labels, 3)) / 5, atol=1e-15)


@pytest.mark.parametrize("loss", [F.cross_entropy, lambda x, y: F.nll_loss(mt.log_softmax(x, axis=-1), y)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int32, np.uint32, np.uint64])
def test_labels_of_every_integer_dtype_give_the_same_loss_and_gradient(loss, dtype):
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(6, 4)), np.array([0, 3, 1, 2, 3, 0])
    a, b = mt.Tensor(logits, requires_grad=True), mt.Tensor(logits, requires_grad=True)
    expected, got = loss(a, labels), loss(b, labels.astype(dtype))
    expected.backward()
    got.backward()
    assert got.item() == expected.item()
    np.testing.assert_array_equal(b.grad, a.grad)


def test_cross_entropy_stays_finite_for_huge_logits():
    loss = F.cross_entropy(mt.Tensor([[1e4, 0.0], [0.0, 1e4]]), np.array([1, 1]))
    assert np.isclose(loss.item(), 5e3)


def test_cross_entropy_accepts_an_ndarray_and_labels_as_a_tensor():
    loss = F.cross_entropy(np.zeros((2, 2)), mt.Tensor(np.array([0, 1])))
    assert np.isclose(loss.item(), np.log(2))


@requires_torch
@pytest.mark.parametrize("targets", ["labels", "one_hot"])
def test_cross_entropy_value_and_gradient_match_torch(targets):
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(scale=2, size=(8, 5)), rng.integers(0, 5, size=8)
    y = labels if targets == "labels" else one_hot(labels, 5)
    x = mt.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, y)
    loss.backward()
    tx = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(y))
    tloss.backward()
    assert abs(loss.item() - tloss.item()) < 1e-10
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), atol=1e-10)


@requires_torch
def test_nll_loss_matches_torch():
    rng = np.random.default_rng(3)
    logp = np.log(rng.dirichlet(np.ones(4), size=6))
    labels = rng.integers(0, 4, size=6)
    expected = torch.nn.functional.nll_loss(torch.tensor(logp), torch.tensor(labels)).item()
    assert abs(F.nll_loss(mt.Tensor(logp), labels).item() - expected) < 1e-12


@pytest.mark.parametrize("loss", [F.cross_entropy, lambda x, t: F.nll_loss(mt.log_softmax(x, axis=-1), t)])
def test_probability_targets_that_require_grad_are_differentiated_too(loss):
    rng = np.random.default_rng(5)
    logits = mt.Tensor(rng.normal(size=(4, 3)), requires_grad=True)
    target = mt.Tensor(rng.dirichlet(np.ones(3), size=4), requires_grad=True)
    assert mt.gradcheck(loss, [logits, target])
    loss(logits, target).backward()
    logp = logits.data - np.log(np.exp(logits.data).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(target.grad, -logp / 4, rtol=1e-12)


def test_a_float32_target_that_requires_grad_gets_a_float32_gradient_through_float64_logits():
    logits = mt.Tensor(np.zeros((2, 2)), requires_grad=True)
    target = mt.Tensor(np.full((2, 2), 0.5, np.float32), requires_grad=True)
    F.cross_entropy(logits, target).backward()
    assert target.grad.dtype == np.float32
    np.testing.assert_allclose(target.grad, np.log(2) / 2, rtol=1e-6)


@requires_torch
def test_cross_entropy_differentiates_probability_targets_as_torch_does():
    rng = np.random.default_rng(6)
    logits, probabilities = rng.normal(scale=2, size=(5, 4)), rng.dirichlet(np.ones(4), size=5)
    x, t = mt.Tensor(logits, requires_grad=True), mt.Tensor(probabilities, requires_grad=True)
    F.cross_entropy(x, t).backward()
    tx, tt = torch.tensor(logits, requires_grad=True), torch.tensor(probabilities, requires_grad=True)
    torch.nn.functional.cross_entropy(tx, tt).backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(t.grad, tt.grad.numpy(), atol=1e-12)


def test_cross_entropy_keeps_float32_logits_in_float32():
    loss = F.cross_entropy(mt.Tensor(np.zeros((2, 3), np.float32)), np.eye(3)[[0, 1]])
    assert loss.dtype == np.float32


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2]), r"labels of shape \(3,\) do not match log-probs of shape \(2, 3\)"),
    (np.zeros((2, 2)), r"targets of shape \(2, 2\)"),
])
def test_nll_loss_rejects_labels_that_do_not_fit(labels, message):
    with pytest.raises(ValueError, match=message):
        F.nll_loss(mt.Tensor(np.zeros((2, 3))), labels)


@pytest.mark.parametrize("loss", [F.cross_entropy, F.nll_loss])
@pytest.mark.parametrize("label", [3, -1])
def test_a_label_outside_the_classes_is_an_index_error(loss, label):
    with pytest.raises(IndexError, match=rf"labels must be in \[0, 3\).*got {label}"):
        loss(mt.Tensor(np.zeros((2, 3))), np.array([0, label]))


def test_mse_loss_is_the_mean_squared_difference_with_its_gradient():
    pred = mt.Tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    target = np.array([[1.0, 0.0], [0.0, 1.0]])
    loss = F.mse_loss(pred, target)
    loss.backward()
    assert loss.item() == pytest.approx((0 + 4 + 9 + 16) / 4)
    np.testing.assert_allclose(pred.grad, 2 * (pred.data - target) / 4)


def test_mse_loss_rejects_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match=r"mse_loss: pred has shape \(3,\) but target has shape \(3, 1\)"):
        F.mse_loss(mt.Tensor(np.zeros(3)), np.zeros((3, 1)))


def test_l2_penalty_is_half_reg_sum_of_squares_with_gradient_reg_times_w():
    rng = np.random.default_rng(4)
    W1, W2 = (mt.Tensor(rng.normal(size=s), requires_grad=True) for s in [(3, 4), (4, 2)])
    penalty = F.l2_penalty([W1, W2], reg=0.3)
    penalty.backward()
    assert penalty.item() == pytest.approx(0.15 * ((W1.data ** 2).sum() + (W2.data ** 2).sum()), rel=1e-14)
    np.testing.assert_allclose(W1.grad, 0.3 * W1.data, rtol=1e-14)
    np.testing.assert_allclose(W2.grad, 0.3 * W2.data, rtol=1e-14)


def test_l2_penalty_of_no_weights_is_zero():
    assert F.l2_penalty([], reg=1.0).item() == 0.0
