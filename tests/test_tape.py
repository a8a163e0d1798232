"""Backward semantics: accumulation, freeing, errors, grad modes, mt.grad, the tape listing."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
from conftest import requires_torch, torch

import microtensor as mt
from microtensor import Tensor


def test_a_tensor_used_twice_gets_both_contributions():
    a = Tensor([3.0], requires_grad=True)
    (a * a + a).sum().backward()
    np.testing.assert_array_equal(a.grad, [7.0])


def test_diamond_graph_sums_gradients_from_both_branches():
    x = Tensor([0.5, -2.0], requires_grad=True)
    h = x.tanh()
    y = (h.exp() + h * 3.0).sum()
    y.backward()
    dh = np.exp(np.tanh(x.data)) + 3.0
    np.testing.assert_allclose(x.grad, dh * (1 - np.tanh(x.data) ** 2))


def test_leaf_gradients_accumulate_across_backward_calls_until_zero_grad():
    w = Tensor([1.0, 2.0], requires_grad=True)
    (w * 3.0).sum().backward()
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [6.0, 6.0])
    w.zero_grad()
    assert w.grad is None
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 3.0])


def test_grad_has_the_leaf_shape_and_dtype_and_is_not_shared_between_leaves():
    a = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    upstream = np.ones((2, 3), dtype=np.float32)
    (a + b).backward(upstream)
    assert a.grad.shape == (2, 3) and a.grad.dtype == np.float32
    assert not np.shares_memory(a.grad, b.grad)
    assert not np.shares_memory(a.grad, upstream)
    a.grad *= 0
    np.testing.assert_array_equal(b.grad, 1.0)
    np.testing.assert_array_equal(upstream, 1.0)


def test_inputs_that_do_not_require_grad_get_no_gradient():
    x = Tensor(np.ones((4, 3)))
    w = Tensor(np.ones((3, 2)), requires_grad=True)
    (x @ w).sum().backward()
    assert x.grad is None and w.grad is not None


def test_intermediate_keeps_grad_only_after_retain_grad():
    x = Tensor([1.0, 2.0], requires_grad=True)
    h = (x * 2.0).retain_grad()
    k = x * 3.0
    (h * k).sum().backward()
    np.testing.assert_array_equal(h.grad, k.data)
    assert k.grad is None


def test_backward_on_non_scalar_without_gradient_is_a_value_error():
    y = Tensor([1.0, 2.0], requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"scalar outputs.*\(2,\)"):
        y.backward()


def test_backward_with_gradient_of_the_wrong_shape_names_both_shapes():
    y = Tensor([1.0, 2.0], requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        y.backward(np.ones(3))


def test_second_backward_through_freed_graph_names_retain_graph():
    x = Tensor([1.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = Tensor([1.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0])


def test_backward_on_a_tensor_without_graph_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).sum().backward()


def test_backward_through_a_100000_op_chain_does_not_recurse():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


def test_no_grad_records_nothing_and_enable_grad_reenables():
    x = Tensor([1.0], requires_grad=True)
    with mt.no_grad():
        y = x * 2
        with mt.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad and not z.is_leaf
    assert mt.is_grad_enabled()


def test_no_grad_works_as_a_decorator_and_restores_the_mode():
    @mt.no_grad()
    def predict(x):
        return x * 2

    assert not predict(Tensor([1.0], requires_grad=True)).requires_grad
    assert mt.is_grad_enabled()


def test_no_grad_in_one_thread_does_not_affect_another():
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def worker():
        with mt.no_grad():
            inside.set()
            release.wait(5)
            seen["worker"] = mt.is_grad_enabled()

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    seen["main"] = (Tensor([1.0], requires_grad=True) * 2).requires_grad
    release.set()
    thread.join()
    assert seen == {"worker": False, "main": True}


def test_requires_grad_on_integer_or_bool_data_is_a_type_error():
    for data in ([1, 2], [True, False], [1 + 2j]):
        with pytest.raises(TypeError, match="floating"):
            Tensor(data, requires_grad=True)


def test_dtypes_follow_numpy():
    assert Tensor(1.0).dtype == np.float64
    assert Tensor([1, 2]).dtype.kind == "i"
    assert Tensor(np.ones(2, dtype=np.float32)).dtype == np.float32
    assert Tensor([1, 2], dtype=np.float32).dtype == np.float32


def test_matmul_shape_mismatch_names_the_op_and_shapes():
    a = Tensor(np.ones((4, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"matmul.*\(4, 3\), \(2, 5\)"):
        a @ np.ones((2, 5))


def test_broadcast_mismatch_names_the_op_and_shapes():
    with pytest.raises(ValueError, match=r"add.*\(3,\), \(4,\)"):
        Tensor(np.ones(3)) + Tensor(np.ones(4))


def test_grad_returns_gradients_without_touching_dot_grad():
    x = Tensor([1.0, 2.0], requires_grad=True)
    h = (x * 3.0).named("h")
    (gx, gh) = mt.grad((h * h).sum(), [x, h])
    np.testing.assert_allclose(gx, 18 * x.data)
    np.testing.assert_allclose(gh, 6 * x.data)
    assert x.grad is None


def test_grad_with_create_graph_gives_second_derivatives():
    x = Tensor([0.3, -1.2], requires_grad=True)
    (g,) = mt.grad(x.tanh().sum(), x, create_graph=True)
    assert isinstance(g, Tensor) and g.requires_grad
    (h,) = mt.grad(g.sum(), x)
    t = np.tanh(x.data)
    np.testing.assert_allclose(h, -2 * t * (1 - t ** 2))


def test_backward_with_create_graph_makes_grad_a_tensor_with_a_graph():
    x = Tensor([2.0], requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    assert isinstance(x.grad, Tensor)
    first = x.grad
    x.zero_grad()
    first.sum().backward()
    np.testing.assert_allclose(x.grad, [12.0])


def test_second_derivatives_through_linear_include_its_bias(rng):
    # linear sums a vector bias's gradient in its own VJP; under create_graph that sum is recorded too.
    x = rng.standard_normal((5, 3))
    W = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    out = mt.linear(x, W, b)
    gW, gb = mt.grad((out * out).sum(), [W, b], create_graph=True)
    np.testing.assert_allclose(gb.data, 2 * (x @ W.data + b.data).sum(axis=0))
    hW, hb = mt.grad(gb.sum(), [W, b])  # sum(gb) = 2 * sum(x @ W + b)
    np.testing.assert_allclose(hb, np.full(4, 2.0 * 5))
    np.testing.assert_allclose(hW, np.tile(2 * x.sum(axis=0)[:, None], (1, 4)))


@requires_torch
def test_hessian_vector_product_of_an_mlp_loss_matches_pytorch(rng):
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    W1, W2, v1, v2 = (rng.standard_normal(s) for s in [(4, 5), (5, 3), (4, 5), (5, 3)])

    def loss_fn(w1, w2, Xs, rows):
        logp = ((Xs @ w1).tanh() @ w2).log_softmax(-1) if isinstance(w1, Tensor) else \
            torch.log_softmax(torch.tanh(Xs @ w1) @ w2, -1)
        return -logp[rows, y].mean()

    a, b = Tensor(W1, requires_grad=True), Tensor(W2, requires_grad=True)
    ga, gb = mt.grad(loss_fn(a, b, X, np.arange(6)), [a, b], create_graph=True)
    hv = mt.grad((ga * v1).sum() + (gb * v2).sum(), [a, b])

    ta, tb = (torch.tensor(w, requires_grad=True) for w in (W1, W2))
    tga, tgb = torch.autograd.grad(loss_fn(ta, tb, torch.tensor(X), torch.arange(6)), [ta, tb],
                                   create_graph=True)
    thv = torch.autograd.grad((tga * torch.tensor(v1)).sum() + (tgb * torch.tensor(v2)).sum(),
                              [ta, tb])
    for mine, theirs in zip(hv, thv):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_tape_lists_recorded_ops_in_execution_order_like_a_wengert_list():
    x = Tensor(np.ones((4, 3)), name="x")
    W = Tensor(np.ones((3, 2)), requires_grad=True, name="W")
    h = (x @ W).relu().named("h")
    loss = h.mean()
    listing = mt.tape(loss)
    assert [e.op for e in listing] == ["matmul", "relu", "mean"]
    assert listing[0].inputs == ("x", "W") and listing[0].shape == (4, 2)
    assert listing[2].inputs == ("h",)
    assert str(listing).splitlines()[1] == "h = relu(v0)  # (4, 2) float64"


def test_ops_on_tensors_without_grad_are_not_recorded():
    x = Tensor(np.ones(3))
    y = (x * 2).exp()
    assert y.is_leaf and not y.requires_grad and len(mt.tape(y)) == 0


def test_changing_a_saved_input_in_place_before_backward_is_an_error():
    W = Tensor(np.ones((3, 2)), requires_grad=True, name="W")
    x = Tensor(np.ones((4, 3)), requires_grad=True)
    loss = (x @ W).sum()
    W.data -= 0.1  # an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match=r"'W' \(shape \(3, 2\)\), input 1 of matmul.*in place"):
        loss.backward()


def test_changing_an_op_output_that_its_derivative_reads_is_an_error():
    x = Tensor([1.0, 2.0], requires_grad=True)
    e = x.exp()
    loss = (e * 2.0).sum()
    e.data *= 3
    with pytest.raises(RuntimeError, match="in place"):
        loss.backward()


def test_changing_an_input_that_needs_no_gradient_is_an_error_when_another_inputs_derivative_reads_it():
    x = Tensor(np.ones((4, 3)), name="x")  # data: no gradient of its own, but d(x @ W)/dW is x.T @ g
    W = Tensor(np.ones((3, 2)), requires_grad=True)
    loss = (x @ W).sum()
    x.data += 1
    with pytest.raises(RuntimeError, match=r"'x' \(shape \(4, 3\)\), input 0 of matmul.*in place"):
        loss.backward()


def test_changing_a_tensor_the_graph_does_not_use_leaves_backward_alone():
    W = Tensor(np.ones((3, 2)), requires_grad=True)
    other = Tensor(np.ones(2), requires_grad=True)
    loss = (np.ones((4, 3)) @ W).sum()
    other.data -= 1  # a change after the forward, so backward looks, and finds the graph's tensors unchanged
    loss.backward()
    np.testing.assert_allclose(W.grad, np.full((3, 2), 4.0))


def test_changing_parameters_after_backward_is_the_normal_training_loop():
    W = Tensor(np.ones((3, 2)), requires_grad=True)
    x = np.ones((4, 3))
    for _ in range(3):
        loss = (x @ W).sum()
        loss.backward()
        W.data -= 0.1 * W.grad
        W.zero_grad()
    np.testing.assert_allclose(W.data, 1 - 3 * 0.1 * 4)


def test_assigning_non_floating_data_to_a_tensor_that_requires_grad_is_a_type_error():
    W = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(TypeError, match="Tensor.data.*integer"):
        W.data = np.array([1, 2])


def test_grad_accepts_a_numpy_scalar_or_a_number_as_the_gradient_of_a_scalar_output():
    x = Tensor([1.0, 2.0], requires_grad=True)
    for upstream in (np.float64(2.0), 2.0, np.array(2.0)):
        (gx,) = mt.grad((x * x).sum(), x, grad_outputs=upstream)
        np.testing.assert_allclose(gx, 4 * x.data)


def test_tape_describes_index_arrays_by_shape_not_by_value():
    x = Tensor(np.ones((3, 4)), requires_grad=True)
    listing = mt.tape(x[np.arange(3), np.array([0, 2, 2])].sum())
    assert listing[0].params == "index=(array(3,), array(3,))"


def test_backward_on_a_leaf_gives_it_the_root_gradient_as_in_pytorch():
    w = Tensor(3.0, requires_grad=True)
    w.backward()
    assert w.grad == 1.0
    v = Tensor([1.0, 2.0], requires_grad=True)
    upstream = np.array([0.5, -1.0])
    v.backward(upstream)
    np.testing.assert_array_equal(v.grad, upstream)
    assert not np.shares_memory(v.grad, upstream)


def test_second_derivatives_work_with_list_constants():
    x = Tensor([[1.0, -2.0]], requires_grad=True)
    (g,) = mt.grad(((x @ [[1.0], [2.0]]) ** 2).sum(), x, create_graph=True)
    (h,) = mt.grad(g.sum(), x)
    np.testing.assert_allclose(g.data, 2 * (x.data @ [[1.0], [2.0]]) * [[1.0, 2.0]])
    np.testing.assert_allclose(h, [[2 * 3.0, 2 * 6.0]])  # d/dx of sum(2 (x.w) w) is 2 w sum(w)


def test_a_vjp_that_returns_the_wrong_shape_is_an_error_naming_the_op():
    bad = mt.Op("bad", lambda a: a * 2, lambda g, out, a: g[:2])
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"derivative of bad gave input 0 a gradient of shape \(2,\)"):
        bad(x).sum().backward()


def test_one_grad_mode_manager_can_be_nested_and_reused():
    off = mt.no_grad()
    with off:
        with off:
            assert not mt.is_grad_enabled()
        assert not mt.is_grad_enabled()
    assert mt.is_grad_enabled()


def test_one_anomaly_detector_can_be_nested_and_reused():
    from microtensor.autograd import _anomaly
    detector = mt.detect_anomaly()
    with detector:
        with detector:
            pass
    assert _anomaly.detector is None
    assert Tensor([0.0]).log().item() == -np.inf  # detection is off again


def test_an_op_called_with_a_missing_input_names_the_op():
    with pytest.raises(TypeError, match=r"^matmul: "):
        mt.matmul(Tensor(np.ones((2, 2))))


def test_with_create_graph_a_leaf_gradient_is_not_the_upstream_gradient_itself():
    z = Tensor([1.0, 2.0], requires_grad=True)
    upstream_tensor, upstream_array = Tensor([3.0, 4.0]), np.array([3.0, 4.0])
    (z + 0).backward(upstream_tensor, create_graph=True)
    assert z.grad is not upstream_tensor
    z.zero_grad()
    (z + 0).backward(upstream_array, create_graph=True)
    assert not np.shares_memory(z.grad.data, upstream_array)
    np.testing.assert_array_equal(z.grad.data, upstream_array)


def test_with_create_graph_leaf_gradients_share_memory_with_nothing():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    (a.reshape(3) + b.reshape(3)).backward(np.ones(3), create_graph=True)  # both views of one array
    a.grad.data *= 0.5
    np.testing.assert_array_equal(b.grad.data, 1.0)
    x, upstream = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3))
    x.backward(upstream, create_graph=True)  # backward on the leaf itself
    assert x.grad is not upstream and not np.shares_memory(x.grad.data, upstream.data)
    y = Tensor(np.ones(3), requires_grad=True)
    y.sum().backward(create_graph=True)  # sum's VJP broadcasts: a read-only view
    y.grad.data += 1
    np.testing.assert_array_equal(y.grad.data, 2.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_zero_dimensional_leaf_gets_an_ndarray_gradient(dtype):
    s = Tensor(dtype(1.0), requires_grad=True)
    w = Tensor(np.array([1.0, 2.0], dtype), requires_grad=True)
    (s * 2).backward()
    assert type(s.grad) is np.ndarray and s.grad.shape == () and s.grad.dtype == dtype
    (s * w).sum().backward()  # accumulated: 2 + (1 + 2)
    assert type(s.grad) is np.ndarray and s.grad == 5.0
    s.grad[...] = 0  # as with any other gradient


def test_requires_grad_set_on_an_integer_tensor_later_is_refused_at_backward():
    t = Tensor([1, 2])
    t.requires_grad = True  # the constructor would refuse this
    with pytest.raises(TypeError, match=r"^backward: only floating-point tensors can require gradients, "
                                        r"got dtype int64"):
        (t * 2.5).sum().backward()
    assert t.grad is None


def test_changing_a_detached_tensor_in_place_is_a_change_of_the_original():
    w = Tensor(np.ones(3), requires_grad=True)
    loss = (w ** 2).sum()
    detached = w.detach().detach()
    detached.data -= 1  # the same array as w's
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_changing_the_original_in_place_is_a_change_of_a_detached_tensor_that_requires_grad():
    w = Tensor(np.ones(3), requires_grad=True)
    detached = w.detach()
    detached.requires_grad = True
    loss = (detached * detached).sum()
    w.data -= 1
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_a_detached_value_kept_for_logging_keeps_no_graph_alive():
    x = Tensor(np.ones((50, 50)), requires_grad=True)
    hidden = (x @ x).tanh()
    saved = weakref.ref(hidden._node.arrays[0])  # the product the tanh saved for backward
    loss = hidden.sum()
    logged = [loss.detach() for _ in range(3)]
    del hidden, loss
    gc.collect()
    assert saved() is None and len(logged) == 3
    w = Tensor(np.ones(3), requires_grad=True)
    for _ in range(100):
        w.detach()  # dropped at once: the list of tensors sharing w's array does not grow
    assert len(w._shares_with) <= 2


def test_giving_a_detached_tensor_a_new_array_leaves_the_original_alone():
    w = Tensor(np.ones(3), requires_grad=True)
    loss = (w ** 2).sum()
    detached = w.detach()
    detached.data = detached.data * 3
    loss.backward()
    np.testing.assert_array_equal(w.grad, 2.0)
    np.testing.assert_array_equal(w.data, 1.0)


def test_numpy_copies_of_a_tensor_are_copies():
    w = Tensor(np.ones(3), requires_grad=True)
    copied, snapshot, shared = np.copy(w), np.array(w), np.asarray(w)
    w.data -= 0.5
    np.testing.assert_array_equal(copied, 1.0)
    np.testing.assert_array_equal(snapshot, 1.0)
    assert shared is w.data
    assert np.array(w, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="copy=False forbids one"):
        np.asarray(w, dtype=np.float32, copy=False)
    assert np.asarray(w, copy=False) is w.data


@pytest.mark.parametrize("call, where", [
    (lambda x: mt.grad(np.ones(3), x), "grad"),
    (lambda x: mt.grad(3.0, x), "grad"),
    (lambda x: mt.tape(np.ones(2)), "tape"),
    (lambda x: mt.check_manual(np.ones(2), {"x": np.ones(1)}), "check_manual"),
])
def test_an_array_where_an_output_tensor_is_expected_is_a_clear_error(call, where):
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match=rf"^{where}: the output must be a Tensor .*, got (ndarray|float)$"):
        call(x)


def test_grad_takes_any_iterable_of_inputs_and_outputs():
    w, b = Tensor([[1.0, 2.0]], requires_grad=True), Tensor([0.5], requires_grad=True)
    loss = (w * 3.0).sum() + (b * b).sum()
    params = {"w": w, "b": b}
    gw, gb = mt.grad(iter([loss]), params.values())
    np.testing.assert_array_equal(gw, [[3.0, 3.0]])
    np.testing.assert_array_equal(gb, [1.0])


def test_bare_no_grad_and_enable_grad_decorate_a_function():
    @mt.no_grad
    def doubled(t):
        return t * 2

    @mt.enable_grad
    def tripled(t):
        return t * 3

    x = Tensor([1.0], requires_grad=True)
    assert not doubled(x).requires_grad
    with mt.no_grad():
        assert tripled(x).requires_grad
    assert mt.is_grad_enabled()


def test_grad_of_several_outputs_when_one_is_inside_the_others_graph_and_one_repeats():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x  # an output, and also on the way to z
    z = (y * 3.0).sum()
    ones = np.ones(3)
    (gx,) = mt.grad([y, z, z], x, grad_outputs=[ones, 1.0, 2.0])
    # d/dx of sum(y) + 3 * z = x^2 + 3 * 3x^2 summed: 2x + 18x
    np.testing.assert_allclose(gx, 20 * x.data)
