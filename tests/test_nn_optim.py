"""nn.optim: SGD and Adam step for step against torch.optim, schedulers against torch's, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import requires_torch, torch

import microtensor as mt
import nn
from nn import functional as F
from nn.optim import SGD, Adam, ExponentialLR, StepLR


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 4)), rng.integers(0, 3, size=16)


def _torch_twin(model):
    """torch leaf tensors holding the same initial weights as ``model``, in the same order."""
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in model.parameters()]


def _torch_loss(params, X, y):
    W1, b1, W2, b2 = params
    logits = torch.relu(torch.tensor(X) @ W1 + b1) @ W2 + b2
    return torch.nn.functional.cross_entropy(logits, torch.tensor(y))


def _train_both(make_ours, make_theirs, steps, seed=0):
    """Run ``steps`` full-batch steps on a float64 TwoLayerNet and its torch twin; return both weights."""
    X, y = _data(seed)
    model = nn.TwoLayerNet(4, 5, 3, seed=seed, dtype=np.float64)
    twin = _torch_twin(model)
    ours, theirs = make_ours(list(model.parameters())), make_theirs(twin)
    for _ in range(steps):
        ours.zero_grad()
        F.cross_entropy(model(X), y).backward()
        ours.step()
        theirs.zero_grad()
        _torch_loss(twin, X, y).backward()
        theirs.step()
    return [p.data for p in model.parameters()], [t.detach().numpy() for t in twin]


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
]


@requires_torch
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(s))
@pytest.mark.parametrize("steps", [1, 5])
def test_sgd_matches_torch_sgd_to_1e_10_from_the_same_weights(settings, steps):
    ours, theirs = _train_both(lambda p: SGD(p, **settings), lambda p: torch.optim.SGD(p, **settings), steps)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


ADAM_SETTINGS = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.05),
    dict(lr=0.01, amsgrad=True),
]


@requires_torch
@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=lambda s: ",".join(s))
@pytest.mark.parametrize("steps", [1, 5])
def test_adam_matches_torch_adam_to_1e_10_from_the_same_weights(settings, steps):
    make_theirs = lambda p: torch.optim.Adam(p, **settings)
    ours, theirs = _train_both(lambda p: Adam(p, **settings), make_theirs, steps)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_one_sgd_step_is_w_minus_lr_times_grad_plus_weight_decay():
    w = mt.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    (w * np.array([3.0, 4.0])).sum().backward()
    SGD([w], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(w.data, [1.0 - 0.1 * (3.0 + 0.5), -2.0 - 0.1 * (4.0 - 1.0)])


def _steps_with_gradients(optimizer, w, gradients):
    """``optimizer`` stepped once per given gradient (set by hand); the weights after each step."""
    weights = []
    for g in gradients:
        w.grad = np.array(g, dtype=np.float64)
        optimizer.step()
        weights.append(w.data.copy())
    return weights


# Gradients that shrink after a large first one: Adam's v then falls, and amsgrad's running
# maximum of v differs from v (with gradients of one size the two are the same).
SHRINKING = [[10.0, -10.0], [0.1, 0.1], [0.1, 0.1]]


def _adam_by_the_formula(w0, gradients, lr, b1, b2, eps, weight_decay=0.0, amsgrad=False):
    p, m, v, v_max, out = np.array(w0), 0.0, 0.0, 0.0, []
    for t, g in enumerate(np.asarray(gradients), start=1):
        g = g + weight_decay * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v_max if amsgrad else v) / np.sqrt(1 - b2 ** t) + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("settings", [dict(), dict(weight_decay=0.5), dict(amsgrad=True)],
                         ids=["plain", "weight_decay", "amsgrad"])
def test_adam_steps_are_the_docstrings_formula(settings):
    w = mt.Tensor([1.0, -2.0], requires_grad=True)
    ours = _steps_with_gradients(Adam([w], lr=0.1, betas=(0.9, 0.9), **settings), w, SHRINKING)
    expected = _adam_by_the_formula([1.0, -2.0], SHRINKING, 0.1, 0.9, 0.9, 1e-8, **settings)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_amsgrad_takes_other_steps_than_adam_once_v_falls():
    runs = []
    for amsgrad in (False, True):
        w = mt.Tensor([1.0, -2.0], requires_grad=True)
        runs.append(_steps_with_gradients(Adam([w], lr=0.1, betas=(0.9, 0.9), amsgrad=amsgrad), w, SHRINKING))
    assert np.abs(runs[0][-1] - runs[1][-1]).max() > 1e-3


@pytest.mark.parametrize("settings", [dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                                      dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.5)],
                         ids=["momentum", "dampening", "dampening_weight_decay"])
def test_sgd_momentum_steps_are_the_docstrings_formula(settings):
    # buf = g at the first step (no dampening there), then momentum * buf + (1 - dampening) * g.
    w = mt.Tensor([1.0, -2.0], requires_grad=True)
    ours = _steps_with_gradients(SGD([w], lr=0.1, **settings), w, SHRINKING)
    p, buf, expected = np.array([1.0, -2.0]), None, []
    for g in np.asarray(SHRINKING):
        g = g + settings.get("weight_decay", 0.0) * p
        buf = g.copy() if buf is None else 0.9 * buf + (1 - settings.get("dampening", 0.0)) * g
        p = p - 0.1 * buf
        expected.append(p)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)  # BLAS rounds once, the formula twice


@requires_torch
@pytest.mark.parametrize("settings", [dict(amsgrad=True), dict(weight_decay=0.5, amsgrad=True)])
def test_adam_with_hand_set_shrinking_gradients_matches_torch(settings):
    w = mt.Tensor([1.0, -2.0], requires_grad=True)
    ours = _steps_with_gradients(Adam([w], lr=0.1, betas=(0.9, 0.9), **settings), w, SHRINKING)
    t = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    theirs, opt = [], torch.optim.Adam([t], lr=0.1, betas=(0.9, 0.9), **settings)
    for g in SHRINKING:
        t.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        theirs.append(t.detach().numpy().copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


LAYOUTS = {  # the arrays a parameter may hold; BLAS updates the contiguous float32 and float64 ones
    "rows": (lambda rng: rng.standard_normal((700, 130)), True),
    "one long row": (lambda rng: rng.standard_normal((1, 70_001)), True),
    "vector": (lambda rng: rng.standard_normal(70_001), True),
    "scalar": (lambda rng: rng.standard_normal(()), True),
    "Fortran order": (lambda rng: np.asfortranarray(rng.standard_normal((300, 257))), True),
    "float32": (lambda rng: rng.standard_normal((900, 100)).astype(np.float32), True),
    "strided view": (lambda rng: rng.standard_normal((600, 260))[::2, ::2], False),
    "float16": (lambda rng: rng.standard_normal((30, 20)).astype(np.float16), False),
    "longdouble": (lambda rng: rng.standard_normal((30, 20)).astype(np.longdouble), False),
    "empty": (lambda rng: np.zeros((0, 3)), False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.3}, {"momentum": 0.9, "nesterov": True}])
def test_sgd_steps_on_every_layout_equal_the_formula_in_place(layout, settings, monkeypatch):
    blas_calls = []
    blas_axpy = nn.optim._axpy

    def counted(dtype_char):
        axpy = blas_axpy(dtype_char)
        return axpy and (lambda *args, **kwargs: blas_calls.append(1) or axpy(*args, **kwargs))

    monkeypatch.setattr(nn.optim, "_axpy", counted)
    rng = np.random.default_rng(1)
    make, through_blas = LAYOUTS[layout]
    data = make(rng)
    w = mt.Tensor(data, requires_grad=True)
    w.data = data  # the very array, in its layout, as an optimizer sees a user's parameter
    grad = rng.standard_normal(data.shape).astype(data.dtype)
    expected, buf = data.astype(np.result_type(data, np.float64)), None  # longdouble stays longdouble
    opt = SGD([w], lr=0.01, **settings)
    for _ in range(2):
        w.grad = grad.copy()
        opt.step()
        step = grad + settings.get("weight_decay", 0) * expected
        if "momentum" in settings:
            buf = step.copy() if buf is None else 0.9 * buf + step
            step = step + 0.9 * buf
        expected -= 0.01 * step
    chunks = -(-data.size // nn.optim._AXPY_CHUNK)  # BLAS gets a long array in chunks, each on one thread
    assert w.data is data and len(blas_calls) == (2 * chunks if through_blas else 0)
    # BLAS rounds once where the formula rounds twice: a few roundings of the dtype apart
    tolerance = 8 * np.finfo(data.dtype).eps * max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(data, expected, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(w.grad, grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr", [0.0, 0.1])
@pytest.mark.filterwarnings("error")
def test_non_finite_gradients_reach_the_weights_as_ieee_arithmetic_says_even_at_lr_0(dtype, lr):
    w = mt.Tensor(np.ones(4, dtype), requires_grad=True)
    w.grad = np.array([np.inf, -np.inf, np.nan, 1.0], dtype)
    SGD([w], lr=lr).step()  # and quietly: no RuntimeWarning
    with np.errstate(invalid="ignore"):
        expected = np.ones(4, dtype) - dtype(lr) * w.grad  # 0 * inf is nan, as in PyTorch
    np.testing.assert_array_equal(w.data, expected)


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: Adam(p, lr=0.1)])
@pytest.mark.parametrize("bad, got", [(np.ones(2), "shape (2,)"), (np.ones((3, 3)), "shape (3, 3)"),
                                      ([1.0, 1.0], "a list"), (0.5, "a float")])
def test_a_gradient_set_by_hand_that_does_not_fit_is_a_clear_error_and_nothing_changes(make, bad, got):
    w, v = mt.Tensor(np.ones(3), requires_grad=True), mt.Tensor(np.ones((3, 2)), requires_grad=True)
    w.grad, v.grad = np.ones(3), bad
    opt = make([w, v])
    message = r"step: a parameter of shape \(3, 2\) has a .grad of " + re.escape(got)
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert (w.data == 1).all() and (v.data == 1).all() and not opt.state


def test_first_adam_step_moves_each_weight_by_about_lr_against_the_gradient_sign():
    w = mt.Tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    (w * np.array([3.0, -0.01, 100.0])).sum().backward()
    Adam([w], lr=0.1).step()
    np.testing.assert_allclose(w.data, [0.9, -1.9, 0.4], atol=1e-6)


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda p: Adam(p, lr=0.1, weight_decay=0.1)])
def test_a_step_updates_the_arrays_in_place_and_keeps_the_parameter_objects(make):
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    objects = [(p, p.data) for p in model.parameters()]
    before = [p.data.copy() for p in model.parameters()]
    opt = make(model.parameters())
    F.cross_entropy(model(np.ones((2, 2), np.float32)), np.array([0, 1])).backward()
    opt.step()
    assert all(p is q and p.data is data for (p, data), q in zip(objects, model.parameters()))
    assert not np.array_equal(before[0], model.fc1.weight.data)


def test_backward_through_a_graph_recorded_before_a_step_is_refused():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    opt = SGD(model.parameters(), lr=0.1)
    X, y = np.ones((2, 2), np.float32), np.array([0, 1])
    F.cross_entropy(model(X), y).backward()
    stale = F.cross_entropy(model(X), y)
    opt.step()
    with pytest.raises(RuntimeError, match="in place"):
        stale.backward()


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda p: Adam(p, lr=0.1, weight_decay=0.1)])
def test_a_step_leaves_the_gradient_untouched(make):
    w = mt.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (w * 3.0).sum().backward()
    make([w]).step()
    np.testing.assert_array_equal(w.grad, [3.0, 3.0])


def test_a_parameter_without_a_gradient_is_skipped():
    a, b = mt.Tensor([1.0], requires_grad=True), mt.Tensor([1.0], requires_grad=True)
    (a * 2.0).sum().backward()
    Adam([a, b], lr=0.1).step()
    assert b.data[0] == 1.0 and a.data[0] != 1.0


def test_float32_parameters_stay_float32():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    opt = Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    F.cross_entropy(model(np.ones((2, 2))), np.array([0, 1])).backward()
    opt.step()
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_optimizer_zero_grad_clears_the_gradients_it_holds():
    w = mt.Tensor([1.0], requires_grad=True)
    opt = SGD([w], lr=0.1)
    (w * 2.0).sum().backward()
    opt.zero_grad()
    assert w.grad is None


def test_zero_grad_without_set_to_none_zeroes_each_gradient_in_place_as_torch_does():
    a, b, unused = (mt.Tensor([1.0, 2.0], requires_grad=True) for _ in range(3))
    opt = SGD([a, b, unused], lr=0.1)
    (a * 2.0).sum().backward()
    (b * b).sum().backward(create_graph=True)  # b.grad is a Tensor carrying a graph
    held = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is held and np.array_equal(held, [0.0, 0.0])
    assert type(b.grad) is np.ndarray and np.array_equal(b.grad, [0.0, 0.0])
    assert unused.grad is None  # as in PyTorch: a gradient that was never made stays None
    (a * 3.0).sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0, 3.0])


def _read_only(kind):
    values = np.array([1.0, 2.0, 3.0])
    if kind == "np.frombuffer":
        return np.frombuffer(values.tobytes(), dtype=np.float64)
    values.setflags(write=False)
    return values


@pytest.mark.parametrize("kind", ["np.frombuffer", "setflags(write=False)"])
@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: Adam(p, lr=0.1)], ids=["SGD", "SGD momentum", "Adam"])
def test_a_step_refuses_a_read_only_parameter_before_updating_any(make, kind):
    first, frozen = mt.Tensor([1.0, 2.0], requires_grad=True), mt.Tensor(_read_only(kind), requires_grad=True)
    opt = make([first, frozen])
    (first.sum() + frozen.sum()).backward()
    message = rf"^{type(opt).__name__}.step: a parameter of shape \(3,\) holds a read-only array"
    with pytest.raises(ValueError, match=message):
        opt.step()
    np.testing.assert_array_equal(first.data, [1.0, 2.0])  # updated before the failure, it would differ
    np.testing.assert_array_equal(frozen.data, [1.0, 2.0, 3.0])
    assert opt.state == {}


def test_a_read_only_memory_map_given_to_a_parameter_later_is_refused_at_the_step(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((4, 3)))
    w = mt.Tensor(np.zeros((4, 3)), requires_grad=True)
    opt = SGD([w], lr=0.1)
    w.data = np.load(tmp_path / "w.npy", mmap_mode="r")  # BLAS's axpy would write into the mapped file
    (w * 2.0).sum().backward()
    with pytest.raises(ValueError, match="read-only array"):
        opt.step()
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), np.ones((4, 3)))


def test_a_lone_tensor_as_a_groups_params_is_one_parameter_as_in_torch():
    a, b = mt.Tensor([1.0, 1.0], requires_grad=True), mt.Tensor([1.0], requires_grad=True)
    opt = SGD([{"params": a}, {"params": b, "lr": 1.0}], lr=0.1)
    assert [group["params"] for group in opt.param_groups] == [[a], [b]]
    (a.sum() + b.sum()).backward()
    opt.step()
    np.testing.assert_allclose(a.data, [0.9, 0.9])
    np.testing.assert_allclose(b.data, [0.0])


def test_groups_mixed_with_tensors_are_a_clear_error():
    a, b = mt.Tensor([1.0], requires_grad=True), mt.Tensor([2.0], requires_grad=True)
    with pytest.raises(TypeError, match=r"^SGD: params mixes parameter groups \(dicts\) and tensors"):
        SGD([{"params": [a]}, b], lr=0.1)


def test_a_group_without_params_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^SGD: a parameter group must have a 'params' entry, got keys"):
        SGD([{"lr": 0.5}], lr=0.1)


def test_parameter_groups_take_their_own_settings():
    a, b = mt.Tensor([1.0], requires_grad=True), mt.Tensor([1.0], requires_grad=True)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    (a + b).sum().backward()
    opt.step()
    assert a.data[0] == pytest.approx(0.9) and b.data[0] == pytest.approx(0.0)


@pytest.mark.parametrize("make, message", [
    (lambda: SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda: Adam(iter([])), "Adam: got an empty parameter list"),
    (lambda: SGD([mt.Tensor([1.0], requires_grad=True)], lr=-0.1), "SGD: invalid learning rate lr -0.1"),
    (lambda: Adam([mt.Tensor([1.0], requires_grad=True)], lr=-1e-3), "Adam: invalid learning rate lr"),
    (lambda: SGD([mt.Tensor([1.0], requires_grad=True)], momentum=-0.5), "invalid momentum"),
    (lambda: SGD([mt.Tensor([1.0], requires_grad=True)], nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda: Adam([mt.Tensor([1.0], requires_grad=True)], betas=(0.9, 1.0)), "betas must be in"),
    (lambda: Adam([mt.Tensor([1.0], requires_grad=True)], weight_decay=-1), "invalid weight_decay"),
])
def test_bad_optimizer_settings_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_tensor_that_does_not_require_grad_is_not_a_parameter():
    with pytest.raises(TypeError, match="requires_grad=True"):
        SGD([mt.Tensor([1.0])], lr=0.1)


# -- schedulers --------------------------------------------------------------------------------------
def _rates(opt, sched, epochs):
    """The learning rate after each of ``epochs`` (step, scheduler step) rounds; works for torch too."""
    rates = []
    for _ in range(epochs):
        opt.step()
        sched.step()
        rates.append(sched.get_last_lr()[0])
    return rates


def _our_rates(make, epochs):
    opt = SGD([mt.Tensor([0.0], requires_grad=True)], lr=0.5)
    return _rates(opt, make(opt), epochs)


@requires_torch
@pytest.mark.parametrize("name, kwargs", [("StepLR", dict(step_size=3, gamma=0.5)),
                                          ("StepLR", dict(step_size=1, gamma=0.9)),
                                          ("ExponentialLR", dict(gamma=0.95))])
def test_schedulers_give_the_same_rates_as_torch(name, kwargs):
    ours = _our_rates(lambda opt: getattr(nn.optim, name)(opt, **kwargs), 12)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    theirs = _rates(opt, getattr(torch.optim.lr_scheduler, name)(opt, **kwargs), 12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-14)


def test_step_lr_multiplies_by_gamma_every_step_size_epochs():
    assert _our_rates(lambda opt: StepLR(opt, step_size=2, gamma=0.1), 5) == pytest.approx(
        [0.5, 0.05, 0.05, 0.005, 0.005])


def test_exponential_lr_multiplies_by_gamma_every_epoch():
    assert _our_rates(lambda opt: ExponentialLR(opt, gamma=0.5), 3) == pytest.approx([0.25, 0.125, 0.0625])


@pytest.mark.parametrize("make", [lambda opt: StepLR(opt, step_size=1, gamma=0.1),
                                  lambda opt: ExponentialLR(opt, gamma=0.1)], ids=["StepLR", "ExponentialLR"])
def test_a_scheduler_scales_every_parameter_groups_rate(make):
    a, b = mt.Tensor([0.0], requires_grad=True), mt.Tensor([0.0], requires_grad=True)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=0.5)
    scheduler = make(opt)
    opt.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.5])
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([0.05, 0.5])


def test_a_scheduled_rate_is_what_the_optimizer_uses():
    w = mt.Tensor([0.0], requires_grad=True)
    opt = SGD([w], lr=1.0)
    ExponentialLR(opt, gamma=0.5).step()
    (w * 1.0).sum().backward()
    opt.step()
    assert w.data[0] == pytest.approx(-0.5)


@pytest.mark.parametrize("make, message", [
    (lambda opt: StepLR(opt, step_size=0), "step_size must be a positive integer"),
    (lambda opt: ExponentialLR(opt, gamma=-0.5), "invalid gamma"),
])
def test_bad_scheduler_settings_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(SGD([mt.Tensor([0.0], requires_grad=True)], lr=0.1))


def test_a_scheduler_needs_an_optimizer():
    with pytest.raises(TypeError, match="StepLR: expected an Optimizer"):
        StepLR([], step_size=1)
