"""microtensor.check: finite differences, gradcheck and its backward contract, compare_grads,
check_manual, the report, and the diagnosis's honesty."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import microtensor as mt
import microtensor.check as check
import nn
import nn.manual
from microtensor import Tensor
from microtensor.diagnosis import Evidence, diagnose

SLOW_SETTINGS = settings(max_examples=25, deadline=None)


def leaf(rng, *shape, name=None):
    return Tensor(rng.standard_normal(shape), requires_grad=True, name=name)


# -- numerical_grad --------------------------------------------------------------------------------
def test_numerical_grad_matches_the_derivative_of_a_numpy_function(rng):
    x = rng.standard_normal((3, 4))
    (g,) = mt.numerical_grad(lambda x: np.sum(np.sin(x) * x), [x])
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-8, atol=1e-9)


def test_numerical_grad_calls_f_with_tensors_for_tensor_inputs(rng):
    W = leaf(rng, 3, 2)
    x = rng.standard_normal((4, 3))
    upstream = rng.standard_normal((4, 2))
    gx, gW = mt.numerical_grad(lambda x, W: ((x @ W).tanh() * upstream).sum(), [x, W])
    dz = upstream * (1 - np.tanh(x @ W.data) ** 2)
    np.testing.assert_allclose(gW, x.T @ dz, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gx, dz @ W.data.T, rtol=1e-7, atol=1e-9)


def test_numerical_grad_is_computed_in_float64_even_for_float32_inputs(rng):
    x = rng.standard_normal(5).astype(np.float32)
    (g,) = mt.numerical_grad(lambda x: (x ** 3).sum(), [x])
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, 3 * x.astype(np.float64) ** 2, rtol=1e-8)


def test_numerical_grad_never_mutates_its_inputs_even_when_f_does(rng):
    x = rng.standard_normal(4)
    before = x.copy()

    def mutating(a):
        total = np.sum(a ** 2)
        a += 1.0
        return total

    mt.numerical_grad(mutating, [x])
    np.testing.assert_array_equal(x, before)


def test_numerical_grad_gives_none_for_integer_inputs(rng):
    x = rng.standard_normal(3)
    labels = np.array([0, 2, 1])
    gx, glabels = mt.numerical_grad(lambda x, i: x[i].sum() * 2, [x, labels])
    assert glabels is None
    np.testing.assert_allclose(gx, [2.0, 2.0, 2.0], rtol=1e-8)


def test_numerical_grad_of_a_non_scalar_function_is_a_value_error_naming_the_shape(rng):
    with pytest.raises(ValueError, match=r"numerical_grad: f must return a scalar.*\(3,\)"):
        mt.numerical_grad(lambda x: x * 2, [rng.standard_normal(3)])


# -- gradcheck: verdicts -----------------------------------------------------------------------------
CORRECT_FUNCTIONS = {
    "tanh of matmul": (lambda x, W: (x @ W).tanh(), [(3, 4), (4, 2)]),
    "broadcast add then sigmoid": (lambda x, b: (x + b).sigmoid(), [(3, 4), (4,)]),
    "log_softmax picked by labels": (lambda x: x.log_softmax(axis=1)[np.arange(3), np.array([0, 2, 1])],
                                     [(3, 4)]),
    "mean of a product": (lambda a, b: (a * b).mean(axis=0), [(3, 4), (3, 4)]),
    "division and exp": (lambda a, b: (a / (b * b + 1)).exp(), [(2, 3), (2, 3)]),
}


@pytest.mark.parametrize("name", sorted(CORRECT_FUNCTIONS))
def test_gradcheck_passes_the_engines_own_ops(name, rng):
    f, shapes = CORRECT_FUNCTIONS[name]
    report = mt.gradcheck(f, [leaf(rng, *s) for s in shapes])
    assert report, str(report)


def _wrong_sigmoid():
    # The classic mistake: the derivative taken from the input, not from the output.
    return mt.Op("sigmoid", lambda x: 1 / (1 + np.exp(-x)), lambda g, out, x: g * x * (1 - x))


def test_gradcheck_fails_a_wrong_derivative(rng):
    report = mt.gradcheck(_wrong_sigmoid(), [leaf(rng, 3, 4, name="z")])
    assert not report and report.first_wrong == "z"


def test_gradcheck_with_a_tiny_eps_still_fails_a_wrong_derivative(rng):
    report = mt.gradcheck(_wrong_sigmoid(), [leaf(rng, 3, 4)], eps=1e-10)
    assert not report


def test_gradcheck_names_the_op_whose_backward_rule_is_wrong(rng):
    wrong = _wrong_sigmoid()
    W = leaf(rng, 4, 2, name="W")
    report = mt.gradcheck(lambda x, W: wrong(x @ W) * 3, [leaf(rng, 3, 4, name="x"), W])
    assert "backward rule of sigmoid" in report["W"].diagnosis
    assert "pre-activation" in report["W"].diagnosis


def test_gradcheck_catches_an_error_of_one_part_in_a_thousand_above_rtol(rng):
    slightly_off = mt.Op("scaled", lambda x: 2 * x, lambda g, out, x: 2.003 * g)
    assert not mt.gradcheck(slightly_off, [leaf(rng, 4)])


def test_gradcheck_compares_whole_jacobians_for_small_inputs(rng):
    report = mt.gradcheck(lambda x, W: x @ W, [leaf(rng, 3, 4, name="x"), leaf(rng, 4, 2, name="W")])
    assert report.title == "gradcheck (full)"
    assert report["x"].shape == (3, 2, 3, 4)  # output shape + input shape


def test_gradcheck_uses_random_projections_for_large_inputs(rng):
    big = leaf(rng, 40, 40, name="big")
    report = mt.gradcheck(lambda a: (a @ a).sigmoid(), [big])
    assert report.title == "gradcheck (projection)" and report


def test_gradcheck_projection_mode_fails_a_wrong_derivative(rng):
    assert not mt.gradcheck(_wrong_sigmoid(), [leaf(rng, 3, 4)], mode="projection")


def test_gradcheck_warns_when_an_input_is_not_float64(rng):
    x = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True, name="x")
    with pytest.warns(UserWarning, match="gradcheck: input 'x' is float32, not float64"):
        mt.gradcheck(lambda x: x * 2, [x])


def test_gradcheck_does_not_warn_for_float64_inputs(rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mt.gradcheck(lambda x: x * 2, [leaf(rng, 3)])


def test_gradcheck_leaves_the_callers_tensors_untouched(rng):
    x = leaf(rng, 3, 2)
    before = x.data.copy()
    mt.gradcheck(lambda x: (x * x).sum(), [x])
    np.testing.assert_array_equal(x.data, before)
    assert x.grad is None


def test_gradcheck_checks_floating_arrays_and_passes_labels_through(rng):
    report = mt.gradcheck(lambda x, y: x.log_softmax(axis=1)[np.arange(3), y].sum(),
                          [rng.standard_normal((3, 4)), np.array([1, 0, 3])])
    assert [row.name for row in report.rows] == ["input 0"] and report


def test_gradcheck_without_a_differentiable_input_is_a_value_error():
    with pytest.raises(ValueError, match="gradcheck: no input to check"):
        mt.gradcheck(lambda y: Tensor(y) * 2, [np.array([1, 2])])


def test_gradcheck_with_an_unknown_mode_is_a_value_error(rng):
    with pytest.raises(ValueError, match="mode must be"):
        mt.gradcheck(lambda x: x * 2, [leaf(rng, 2)], mode="fast")


# -- gradcheck: the backward contract, each rule caught when broken ---------------------------------
def _contract(report, name):
    return next(c for c in report.checks if c.name == name)


def test_the_contract_holds_for_the_engines_ops(rng):
    report = mt.gradcheck(lambda a, b: (a @ b).relu() + b.sum(), [leaf(rng, 3, 4), leaf(rng, 4, 2)])
    assert len(report.checks) == 7 and all(c.ok for c in report.checks)


def test_a_backward_that_ignores_the_upstream_gradient_breaks_zero_in_zero_out(rng):
    ignores_g = mt.Op("ignores_g", lambda x: 2 * x, lambda g, out, x: 2 + 0 * g)
    report = mt.gradcheck(ignores_g, [leaf(rng, 3, name="x")])
    assert not _contract(report, "a zero upstream gradient gives zero gradients").ok
    assert not report


def test_a_backward_that_is_not_linear_in_the_upstream_gradient_is_caught(rng):
    squares_g = mt.Op("squares_g", lambda x: 2 * x, lambda g, out, x: g * g)
    report = mt.gradcheck(squares_g, [leaf(rng, 3, name="x")])
    assert not _contract(report, "gradients are linear in the upstream gradient").ok


def test_a_backward_that_differs_between_runs_is_caught(rng):
    noise = np.random.default_rng(1)
    flaky = mt.Op("flaky", lambda x: 2 * x, lambda g, out, x: 2 * g + 1e-12 * noise.standard_normal(g.shape))
    report = mt.gradcheck(flaky, [leaf(rng, 3, name="x")])
    assert not _contract(report, "two backward runs agree").ok


def test_a_function_that_mutates_its_inputs_array_behind_the_engines_back_is_caught(rng):
    def mutating(x):
        out = x * 2
        x.data[...] += 1.0  # writes into the array: the engine's in-place detection does not see it
        return out

    report = mt.gradcheck(mutating, [leaf(rng, 3, name="x")])
    assert _contract(report, "inputs are not mutated").detail == "fails for x"


def test_a_backward_that_mutates_the_upstream_gradient_is_caught(rng):
    def scale_in_place(g, out, x):
        g *= 2
        return g

    report = mt.gradcheck(mt.Op("in_place", lambda x: 2 * x, scale_in_place), [leaf(rng, 3)])
    assert not _contract(report, "the upstream gradient is not mutated").ok


def test_gradients_that_share_memory_are_caught(rng, monkeypatch):
    engine_grad = check.grad

    def aliasing_grad(*args, **kwargs):
        first, *rest = engine_grad(*args, **kwargs)
        return (first, *(first for _ in rest))

    monkeypatch.setattr(check, "grad", aliasing_grad)
    report = mt.gradcheck(lambda a, b: a * b, [leaf(rng, 3, name="a"), leaf(rng, 3, name="b")])
    assert not _contract(report, "gradients alias nothing (each other, the inputs, the upstream)").ok


def test_gradients_of_the_wrong_dtype_are_caught(rng, monkeypatch):
    engine_grad = check.grad
    half = lambda *args, **kwargs: tuple(g.astype(np.float16) for g in engine_grad(*args, **kwargs))
    monkeypatch.setattr(check, "grad", half)
    report = mt.gradcheck(lambda a: a * 3, [leaf(rng, 3, name="a")])
    assert _contract(report, "gradients have the inputs' shapes and dtypes").detail == "fails for a"


# -- compare_grads and the report -------------------------------------------------------------------
def test_compare_grads_of_equal_mappings_is_truthy_with_no_first_wrong(rng):
    grads = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    report = mt.compare_grads(grads, {k: v.copy() for k, v in grads.items()})
    assert report and report.ok and report.first_wrong is None
    assert [row.verdict for row in report.rows] == ["ok", "ok"]


def test_compare_grads_first_wrong_is_the_first_mismatch_in_the_expected_order(rng):
    expected = {"W2": np.ones(2), "W1": np.ones(2), "b1": np.ones(2)}
    report = mt.compare_grads(expected, {"W2": np.ones(2), "W1": np.zeros(2), "b1": -np.ones(2)})
    assert not report and report.first_wrong == "W1"
    assert [row.verdict for row in report.rows] == ["ok", "WRONG", "mismatch"]


def test_compare_grads_reports_missing_and_unexpected_names(rng):
    report = mt.compare_grads({"W": np.ones(2), "b": np.ones(2)}, {"W": np.ones(2), "c": np.ones(2)})
    assert report["b"].diagnosis == "no gradient was given for it"
    assert report["c"].diagnosis == "has no expected gradient to compare"
    assert not report


def test_a_row_reports_its_errors_worst_index_and_fraction_out_of_tolerance():
    expected = np.array([[1.0, 2.0], [4.0, -8.0]])
    actual = expected + np.array([[0.0, 0.0], [0.5, 0.0]])
    row = mt.compare_grads({"W": expected}, {"W": actual})["W"]
    assert (row.max_abs_err, row.max_rel_err, row.worst_index, row.frac_bad) == (0.5, 0.0625, (1, 0), 0.25)
    assert row.shape == (2, 2) and not row.ok


def test_tolerance_is_atol_plus_rtol_times_the_expected_magnitude():
    expected = np.array([1000.0, 1e-3])
    assert mt.compare_grads({"a": expected}, {"a": expected + [9e-3, 0.0]}, atol=1e-8, rtol=1e-5)
    assert not mt.compare_grads({"a": expected}, {"a": expected + [0.0, 1e-7]}, atol=1e-8, rtol=1e-5)


def test_compare_grads_with_params_recognises_a_missing_l2_term(rng):
    W = rng.standard_normal((4, 3))
    data_grad = rng.standard_normal((4, 3))
    report = mt.compare_grads({"W": data_grad + 0.01 * W}, {"W": data_grad}, params={"W": W})
    assert report["W"].diagnosis.startswith("misses the L2 term 0.01 * W")


@pytest.mark.parametrize("scale, words", [
    (16.0, "has the L2 term 0.01 * W, but its data term (the rest) is N = 16 times the expected data term"),
    (1 / 16, "its data term (the rest) is 1/N of the expected data term (N = 16"),
    (-1.0, "has the L2 term 0.01 * W, but the sign of its data term (the rest) is flipped"),
    (-2.0, "its data term (the rest) has the sign flipped and is twice the expected data term"),
    (0.0, "holds only the L2 term 0.01 * W: its data term"),
])
def test_compare_grads_names_a_data_term_off_by_a_factor_under_a_right_l2_term(rng, scale, words):
    # N * dW_data + reg * W is no multiple of dW_data + reg * W: the two parts are fitted apart.
    W, data_grad = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    report = mt.compare_grads({"W": data_grad + 0.01 * W}, {"W": scale * data_grad + 0.01 * W},
                              params={"W": W}, batch_size=16)
    assert words in report["W"].diagnosis


def test_a_data_term_factor_is_not_read_into_an_l2_term_of_another_size_or_a_random_error(rng):
    W, data_grad = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    expected = {"W": data_grad + 0.01 * W}
    # (1 + reg) * dW_data is its own mistake, named first.
    regularised = mt.compare_grads(expected, {"W": 1.01 * data_grad}, params={"W": W})
    assert regularised["W"].diagnosis.startswith("looks like dW + 0.01 * dW")
    noise = mt.compare_grads(expected, {"W": 16 * data_grad + 0.01 * W + 1e-3 * rng.standard_normal((4, 3))},
                             params={"W": W})
    assert noise["W"].diagnosis.startswith("is off by up to")


def test_compare_grads_with_a_batch_size_names_the_factor_n(rng):
    g = rng.standard_normal((4, 3))
    report = mt.compare_grads({"W": g}, {"W": 16 * g}, batch_size=16)
    assert "N = 16 times the expected gradient, N the batch size" in report["W"].diagnosis


def test_without_a_batch_size_an_integer_factor_is_still_named(rng):
    g = rng.standard_normal((4, 3))
    assert "16 times the expected gradient: a missing division by 16" in mt.compare_grads(
        {"W": g}, {"W": 16 * g})["W"].diagnosis


def test_str_of_a_report_is_a_table_with_one_line_per_row_and_the_diagnoses():
    expected = {"W": np.ones((2, 3)), "b": np.ones(3)}
    report = mt.compare_grads(expected, {"W": np.ones((3, 2)), "b": np.ones(3)})
    lines = str(report).splitlines()
    assert lines[0].startswith("compare_grads: 1 of 2 gradients do not match; first wrong: W")
    assert lines[2].split() == ["name", "shape", "max", "abs", "err", "max", "rel", "err", "worst", "at",
                                "out", "of", "tol", "verdict"]
    assert lines[3].split()[0] == "W" and lines[3].split()[-1] == "WRONG"
    assert lines[4].split()[0] == "b" and lines[4].split()[-1] == "ok"
    assert lines[6].startswith("W: has shape (3, 2) but the tensor has shape (2, 3)")


def test_str_of_a_gradcheck_report_lists_the_contract(rng):
    text = str(mt.gradcheck(lambda x: x * 2, [leaf(rng, 2)]))
    assert "backward contract:" in text and "ok    two backward runs agree" in text


def test_asking_a_report_for_an_unknown_row_names_the_rows():
    with pytest.raises(KeyError, match=r"no row named 'c'; rows: \['a'\]"):
        mt.compare_grads({"a": np.ones(1)}, {"a": np.ones(1)})["c"]


# -- check_manual ------------------------------------------------------------------------------------
def small_net(rng):
    X = rng.standard_normal((6, 4))
    W1, b1 = leaf(rng, 4, 5, name="W1"), leaf(rng, 5, name="b1")
    W2 = leaf(rng, 5, 3, name="W2")
    z = (X @ W1 + b1).named("z")
    h = z.tanh().named("h")
    out = (h @ W2).named("out")
    return X, W1, b1, W2, z, h, out


def manual_small_net(X, W1, b1, W2, z, h, upstream):
    dh = upstream @ W2.data.T
    dz = dh * (1 - h.data ** 2)
    return {"out": upstream, "W2": h.data.T @ upstream, "h": dh, "z": dz, "W1": X.T @ dz, "b1": dz.sum(0)}


def test_check_manual_is_truthy_when_every_named_gradient_matches_a_non_uniform_upstream(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    upstream = rng.standard_normal(out.shape)
    report = mt.check_manual(out, manual_small_net(X, W1, b1, W2, z, h, upstream), gradient=upstream)
    assert report and report.first_wrong is None


def test_check_manual_rows_are_in_backward_order_output_first(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    upstream = rng.standard_normal(out.shape)
    manual = manual_small_net(X, W1, b1, W2, z, h, upstream)
    report = mt.check_manual(out, dict(reversed(list(manual.items()))), gradient=upstream)
    assert [row.name for row in report.rows] == ["out", "W2", "h", "z", "b1", "W1"]


def test_first_wrong_is_the_wrong_step_not_the_steps_that_inherit_its_error(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    upstream = rng.standard_normal(out.shape)
    manual = manual_small_net(X, W1, b1, W2, z, h, upstream)
    manual["z"] = manual["h"] * (1 - z.data ** 2)  # the tanh derivative from the pre-activation
    manual["W1"], manual["b1"] = X.T @ manual["z"], manual["z"].sum(0)
    report = mt.check_manual(out, manual, gradient=upstream)
    assert report.first_wrong == "z"
    assert "tanh derivative on the pre-activation" in report["z"].diagnosis
    assert report["W1"].diagnosis.startswith("may follow from the wrong gradient of 'z' (fix that first)")


def test_a_row_with_the_same_mistake_as_the_wrong_step_says_it_carries_it_along(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    upstream = rng.standard_normal(out.shape)
    manual = manual_small_net(X, W1, b1, W2, z, h, 2 * upstream)  # every step twice too large
    report = mt.check_manual(out, manual, gradient=upstream)
    assert report.first_wrong == "out" and report["out"].diagnosis.startswith("is twice")
    assert report["W1"].diagnosis == "carries the mistake of 'out' along (fix that first)"


def test_check_manual_touches_no_grad_and_keeps_the_graph(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    upstream = rng.standard_normal(out.shape)
    mt.check_manual(out, manual_small_net(X, W1, b1, W2, z, h, upstream), gradient=upstream)
    assert W1.grad is None and b1.grad is None and W2.grad is None
    out.backward(upstream)
    assert W1.grad is not None


def test_check_manual_with_an_unknown_name_lists_the_named_tensors(rng):
    X, W1, b1, W2, z, h, out = small_net(rng)
    with pytest.raises(ValueError, match=r"no tensor named 'dz'.*\['W1', 'W2', 'b1', 'h', 'out', 'z'\]"):
        mt.check_manual(out.sum(), {"dz": np.ones((6, 5))})


def test_check_manual_with_a_name_used_twice_is_a_value_error(rng):
    a = leaf(rng, 3, name="a")
    b = (a * 2).named("a")
    with pytest.raises(ValueError, match="2 tensors named 'a'"):
        mt.check_manual(b.sum(), {"a": np.ones(3)})


def test_check_manual_for_a_tensor_without_grad_is_a_value_error(rng):
    X = Tensor(rng.standard_normal((2, 3)), name="X")
    W = leaf(rng, 3, 2, name="W")
    with pytest.raises(ValueError, match="'X' does not require grad"):
        mt.check_manual((X @ W).sum(), {"X": np.ones((2, 3))})


def test_a_gradient_that_is_not_an_array_of_numbers_is_a_type_error_naming_it(rng):
    W = leaf(rng, 3, name="W")
    with pytest.raises(TypeError, match="the gradient given for 'W' is a NoneType, not an array of real"):
        mt.check_manual((W * W).sum(), {"W": None})


def test_check_manual_names_n_from_the_mean_in_the_graph(rng):
    W = leaf(rng, 3, 2, name="W")
    X = rng.standard_normal((5, 3))
    loss = ((X @ W) ** 2).mean()
    correct = X.T @ (2 * (X @ W.data)) / 10
    assert "N = 10 times" in mt.check_manual(loss, {"W": 10 * correct})["W"].diagnosis


# -- the diagnosis is honest: no false explanations, no false alarms ---------------------------------
@SLOW_SETTINGS
@given(rows=st.integers(2, 6), cols=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_unrelated_noise_is_never_explained_by_a_hypothesis(rows, cols, seed):
    rng = np.random.default_rng(seed)
    expected, actual = rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))
    assert diagnose(Evidence(expected, actual)).startswith("is off by up to")


def test_a_factor_that_is_almost_but_not_exactly_constant_is_not_called_a_factor(rng):
    expected = rng.standard_normal(20)
    actual = 2 * expected * (1 + 1e-3 * rng.standard_normal(20))
    assert "twice" not in diagnose(Evidence(expected, actual))


def test_a_constant_factor_without_a_name_is_given_as_a_number(rng):
    expected = rng.standard_normal(10)
    assert diagnose(Evidence(expected, 3.7 * expected)).startswith("is 3.7 times the expected gradient")


def test_a_gradient_that_should_be_zero_is_said_to_be(rng):
    assert diagnose(Evidence(np.zeros(4), rng.standard_normal(4))).startswith("should be zero everywhere")


def test_a_non_finite_expected_gradient_points_to_detect_anomaly():
    assert "mt.detect_anomaly()" in diagnose(Evidence(np.array([1.0, np.inf]), np.array([1.0, 2.0])))


@SLOW_SETTINGS
@given(n=st.integers(1, 6), d=st.integers(1, 5), h=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_correct_hand_gradients_of_random_nets_always_pass_check_manual(n, d, h, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W1, W2 = leaf(rng, d, h, name="W1"), leaf(rng, h, 2, name="W2")
    z = (X @ W1).named("z")
    out = (z.sigmoid() @ W2).named("out")
    upstream = rng.standard_normal(out.shape)
    s = 1 / (1 + np.exp(-z.data))
    dz = (upstream @ W2.data.T) * s * (1 - s)
    manual = {"out": upstream, "W2": s.T @ upstream, "z": dz, "W1": X.T @ dz}
    assert mt.check_manual(out, manual, gradient=upstream)


@pytest.mark.parametrize("mistake, words", [
    (lambda probs, Y, N: probs / N, "the gradient at scores misses the - y of (probs - y) / N"),
    (lambda probs, Y, N: -Y / N, "the gradient at scores misses the softmax * sum(g) term"),
])
def test_a_mistake_at_the_fused_cross_entropy_is_named_from_the_parameters_alone(mistake, words):
    rng = np.random.default_rng(4)
    N, X, y = 6, rng.standard_normal((6, 3)), np.array([0, 2, 1, 1, 0, 2])
    W1, b1 = Tensor(rng.standard_normal((3, 5)), requires_grad=True, name="W1"), Tensor(
        np.zeros(5), requires_grad=True, name="b1")
    W2, b2 = Tensor(rng.standard_normal((5, 3)), requires_grad=True, name="W2"), Tensor(
        np.zeros(3), requires_grad=True, name="b2")
    z = (Tensor(X) @ W1 + b1).named("z")
    scores = (z.relu() @ W2 + b2).named("scores")
    loss = mt.softmax_cross_entropy(scores, y)
    probs = np.exp(scores.data) / np.exp(scores.data).sum(axis=1, keepdims=True)

    def backward(dscores):
        dz = (dscores @ W2.data.T) * (z.data > 0)
        h = np.maximum(z.data, 0)
        return {"W2": h.T @ dscores, "b2": dscores.sum(0), "W1": X.T @ dz, "b1": dz.sum(0)}

    assert mt.check_manual(loss, backward((probs - np.eye(3)[y]) / N))
    report = mt.check_manual(loss, backward(mistake(probs, np.eye(3)[y], N)))
    assert report.first_wrong == "b2"
    for row in report.rows:
        assert row.diagnosis.startswith("is wrong only by what a mistake further down carries back")
        assert words in row.diagnosis


def _two_layer_net_with_l2(fused):
    """The notebooks' two-layer net with L2, its loss as one fused op or as log-softmax and mean."""
    rng = np.random.default_rng(7)
    N, X, y, reg = 6, rng.standard_normal((6, 3)), np.array([0, 2, 1, 1, 0, 2]), 0.1
    W1, b1 = leaf(rng, 3, 5, name="W1"), leaf(rng, 5, name="b1")
    W2, b2 = leaf(rng, 5, 3, name="W2"), leaf(rng, 3, name="b2")
    z = Tensor(X) @ W1 + b1
    scores = z.relu() @ W2 + b2
    data_loss = (mt.softmax_cross_entropy(scores, y) if fused
                 else -scores.log_softmax(axis=1)[np.arange(N), y].mean())
    loss = data_loss + 0.5 * reg * ((W1 ** 2).sum() + (W2 ** 2).sum())
    probs = np.exp(scores.data) / np.exp(scores.data).sum(axis=1, keepdims=True)

    def backward(dscores, db2=None, unmasked=()):
        """``unmasked``: the gradients whose formula takes dh instead of the masked dz."""
        dh = dscores @ W2.data.T
        dz = dh * (z.data > 0)
        h = np.maximum(z.data, 0)
        return {"W2": h.T @ dscores + reg * W2.data, "b2": dscores.sum(0) if db2 is None else db2,
                "W1": X.T @ (dh if "W1" in unmasked else dz) + reg * W1.data,
                "b1": (dh if "b1" in unmasked else dz).sum(0)}

    return loss, backward, probs, np.eye(3)[y], N


@pytest.mark.parametrize("fused", [True, False], ids=["cross_entropy", "log_softmax_and_mean"])
@pytest.mark.parametrize("scale, words", [(1.0, "the 1/N of the mean over the batch is missing"),
                                          (1 / 36, "divided by N once too often")])
def test_a_missing_or_doubled_1_over_n_is_named_in_every_parameter_row_despite_l2(fused, scale, words):
    loss, backward, probs, Y, N = _two_layer_net_with_l2(fused)
    assert mt.check_manual(loss, backward((probs - Y) / N))
    report = mt.check_manual(loss, backward((probs - Y) * scale))
    assert report.first_wrong == "b2"
    # The L2 part of dW1 and dW2 is right, so those are no multiple of the right gradient:
    # only the mistake carried back from the loss explains them.
    for row in report.rows:
        assert row.diagnosis.startswith("is wrong only by what a mistake further down carries back"), row
        assert words in row.diagnosis


WRONG_GRADIENT = "do not have this error, so it is in this one's formula"


@pytest.mark.parametrize("fused", [True, False], ids=["cross_entropy", "log_softmax_and_mean"])
@pytest.mark.parametrize("wrong, name, words", [
    (dict(db2=lambda probs, Y, N: (probs - Y).mean(0) / N), "b2", ("is 1/N of the expected gradient",)),
    (dict(db2=lambda probs, Y, N: probs.sum(0) / N), "b2", (WRONG_GRADIENT, "- y of (probs - y) / N")),
    (dict(unmasked=("W1",)), "W1", (WRONG_GRADIENT, "the ReLU unmasked")),  # X.T @ dh; db1 sums dz
    (dict(unmasked=("b1",)), "b1", (WRONG_GRADIENT, "the ReLU unmasked")),
], ids=["db2_mean", "db2_without_y", "dW1_unmasked", "db1_unmasked"])
def test_a_mistake_in_one_parameter_alone_is_not_blamed_on_a_step_further_down(fused, wrong, name, words):
    # A mistake made at the loss or the ReLU would make every parameter before it wrong; here only
    # one is, so its own formula is named, as taking a wrong gradient when that is what it did.
    loss, backward, probs, Y, N = _two_layer_net_with_l2(fused)
    db2 = wrong.get("db2")
    manual = backward((probs - Y) / N, db2=db2 and db2(probs, Y, N), unmasked=wrong.get("unmasked", ()))
    report = mt.check_manual(loss, manual)
    assert report.first_wrong == name and [row.name for row in report.rows if not row.ok] == [name]
    diagnosis = report[name].diagnosis
    assert "carries back" not in diagnosis and all(w in diagnosis for w in words), diagnosis


@pytest.mark.parametrize("mistake, words", [
    (lambda s, g: s * (1 - s) * g, "uses only the diagonal of the softmax Jacobian"),
    (lambda s, g: g, "passes the gradient through the softmax without its derivative"),
], ids=["diagonal_only", "no_derivative"])
@pytest.mark.parametrize("checked", [("scores", "W"), ("W",)], ids=["scores_checked", "weight_only"])
def test_a_softmax_derived_like_a_sigmoid_or_not_at_all_is_named(mistake, words, checked):
    # loss = -log(softmax(scores)[y]).mean(), derived by hand through the softmax on its own.
    rng = np.random.default_rng(1)
    N, C, X, y = 5, 4, rng.standard_normal((5, 3)), np.array([0, 3, 1, 1, 2])
    W = leaf(rng, 3, C, name="W")
    scores = (Tensor(X) @ W).named("scores")
    probs = scores.softmax(axis=1)
    loss = -probs[np.arange(N), y].log().mean()
    s = probs.data
    dprobs = np.zeros((N, C))
    dprobs[np.arange(N), y] = -1 / (N * s[np.arange(N), y])

    def manual(dscores):
        return {name: {"scores": dscores, "W": X.T @ dscores}[name] for name in checked}

    assert mt.check_manual(loss, manual(s * (dprobs - (dprobs * s).sum(axis=1, keepdims=True))))
    report = mt.check_manual(loss, manual(mistake(s, dprobs)))
    assert report.first_wrong == checked[0]
    assert words in report[checked[0]].diagnosis
    if checked == ("W",):
        assert "carries back: the gradient at scores" in report["W"].diagnosis


# -- the diagnosis knows the loss's L2 term, N and the dtype from the tape -------------------------
def _notebook_net(reg=0.01, n=8, l2_divided_by_two=False, dtype=np.float64, seed=0):
    """The notebooks' two-layer net with its steps named, and its right backward pass."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, 4)).astype(dtype), rng.integers(0, 3, n)
    W1 = Tensor((0.5 * rng.standard_normal((4, 5))).astype(dtype), requires_grad=True, name="W1")
    W2 = Tensor((0.5 * rng.standard_normal((5, 3))).astype(dtype), requires_grad=True, name="W2")
    b2 = Tensor((0.1 * rng.standard_normal(3)).astype(dtype), requires_grad=True, name="b2")
    z1 = (Tensor(X) @ W1).named("z1")
    h = z1.relu().named("h")
    scores = (h @ W2 + b2).named("scores")
    penalty = (W1 ** 2).sum() + (W2 ** 2).sum()
    l2 = reg * penalty / 2 if l2_divided_by_two else 0.5 * reg * penalty
    loss = -scores.log_softmax(axis=1)[np.arange(n), y].mean() + l2
    s = scores.data
    probs = np.exp(s - s.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    dscores = (probs - np.eye(3, dtype=dtype)[y]) / n
    dh = dscores @ W2.data.T
    dz1 = dh * (z1.data > 0)
    right = {"scores": dscores, "W2": h.data.T @ dscores + reg * W2.data, "b2": dscores.sum(0),
             "h": dh, "z1": dz1, "W1": X.T @ dz1 + reg * W1.data}
    return loss, right, dict(X=X, h=h.data, dscores=dscores, dh=dh, W1=W1.data, W2=W2.data, b2=b2.data,
                             n=n, reg=reg, probs=probs, Y=np.eye(3, dtype=dtype)[y])


@pytest.mark.parametrize("seed", range(10))
def test_a_correct_float32_backprop_is_no_mismatch_at_the_default_tolerances(seed):
    loss, right, _ = _notebook_net(dtype=np.float32, n=64, seed=seed)
    report = mt.check_manual(loss, right)
    assert report, report


def test_a_small_l2_term_left_out_of_a_float32_digits_net_is_seen_above_the_rounding():
    X, y = nn.data.load_digits()
    model = nn.TwoLayerNet(64, 32, 10, seed=0)  # float32
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.name = name  # check_manual finds tensors by name
    loss = nn.manual.loss(model, X, y, reg=3e-5)
    right = nn.manual.gradients(model, X, y, reg=3e-5)
    assert mt.check_manual(loss, right)
    forgot = {**right, "fc2.weight": right["fc2.weight"] - 3e-5 * params["fc2.weight"].data}
    assert mt.check_manual(loss, forgot).first_wrong == "fc2.weight"


def test_a_float32_mistake_is_still_found_and_named():
    loss, right, v = _notebook_net(dtype=np.float32, n=64)
    report = mt.check_manual(loss, {**right, "W2": v["h"].T @ v["dscores"]})
    assert report.first_wrong == "W2" and "misses the L2 term 0.01 * W2" in report["W2"].diagnosis


def test_rounding_atol_is_the_given_atol_in_float64_and_float32_rounding_above_it():
    ones = np.ones(3)
    assert check.rounding_atol(1e-8, ones, ones) == 1e-8
    assert check.rounding_atol(1e-8, ones.astype(np.float32), ones) == pytest.approx(32 * 2.0 ** -23)
    assert check.rounding_atol(1e-8, np.full(3, np.inf), ones) == 1e-8


@pytest.mark.parametrize("data_loss", [
    lambda logp, Y, n: -logp[np.arange(n), Y.argmax(1)].sum() / n,
    lambda logp, Y, n: -(Y * logp).sum() / n,
    lambda logp, Y, n: -1 / n * (Y * logp).sum(),
    lambda logp, Y, n: (Y * logp).sum() * (-1 / n),
    lambda logp, Y, n: mt.mean(-(Y * logp).sum(axis=1)),
], ids=["sum_of_picked/N", "sum/N", "-1/N*sum", "sum*(-1/N)", "mean_of_rows"])
def test_the_batch_size_is_found_in_every_usual_spelling_of_the_mean_loss(data_loss):
    # An input dimension of 2, as in the blobs: the / 2 of the L2 term divides a sum over W's 2 rows.
    rng = np.random.default_rng(0)
    n, X, y = 8, rng.standard_normal((8, 2)), rng.integers(0, 3, 8)
    W = Tensor(rng.standard_normal((2, 3)), requires_grad=True, name="W")
    Y = np.eye(3)[y]
    loss = data_loss((Tensor(X) @ W).log_softmax(axis=1), Y, n) + 0.1 * (W ** 2).sum() / 2
    (right,) = mt.grad(loss, [W], retain_graph=True)
    diagnosis = mt.check_manual(loss, {"W": 2 * right})["W"].diagnosis
    assert diagnosis.startswith("is twice the expected gradient"), diagnosis
    probs = np.exp((Tensor(X) @ W).log_softmax(axis=1).data)
    no_mean = X.T @ (probs - Y) + 0.1 * W.data  # the 1/N left out of the data term
    diagnosis = mt.check_manual(loss, {"W": no_mean})["W"].diagnosis
    assert "N = 8 times the expected" in diagnosis and "N the batch size" in diagnosis, diagnosis


def test_the_halving_of_an_l2_term_is_not_taken_for_the_batch_size():
    loss, right, _ = _notebook_net(l2_divided_by_two=True)
    assert mt.check_manual(loss, right)
    diagnosis = mt.check_manual(loss, {"W2": 2 * right["W2"]})["W2"].diagnosis
    assert diagnosis.startswith("is twice the expected gradient"), diagnosis


@pytest.mark.parametrize("make, words", [
    (lambda v: v["n"] * v["h"].T @ v["dscores"],
     "misses the L2 term 0.01 * W2 (add reg * W2), and its data term (the rest) is N = 8 times"),
    (lambda v: v["n"] * v["h"].T @ v["dscores"] + 2 * v["reg"] * v["W2"],
     "has the L2 term 0.02 * W2 where the loss gives 0.01 * W2, and its data term (the rest) is N = 8 times"),
    (lambda v: v["n"] * v["h"].T @ v["dscores"] + v["reg"] * v["W2"],  # as a 1/N left out of dscores gives
     "is wrong only by what a mistake further down carries back: the gradient at v11, the input of mean"),
    (lambda v: v["h"].T @ v["dscores"] - v["reg"] * v["W2"],
     "subtracts the L2 term instead of adding it: it has -0.01 * W2 where the loss gives +0.01 * W2"),
    (lambda v: v["h"].T @ v["dscores"] + 0.5 * v["reg"] * v["W2"],
     "has the L2 term 0.005 * W2 where the loss gives 0.01 * W2"),
    (lambda v: v["h"].T @ v["dscores"] + 2 * v["reg"] * v["W2"],
     "has an extra L2 term 0.01 * W2: the L2 term counted twice, 0.02 * W2 in all"),
], ids=["no_1/N_no_l2", "no_1/N_double_l2", "no_1/N", "l2_subtracted", "l2_halved", "l2_doubled"])
def test_check_manual_judges_the_l2_part_against_the_losss_own_reg(make, words):
    # compare_grads can only read reg off the gradient; check_manual reads it off the tape.
    loss, right, v = _notebook_net()
    diagnosis = mt.check_manual(loss, {"W2": make(v)})["W2"].diagnosis
    assert diagnosis.startswith(words), diagnosis


def test_an_l2_term_on_a_bias_the_loss_does_not_regularise_is_called_so():
    loss, right, v = _notebook_net()
    diagnosis = mt.check_manual(loss, {"b2": right["b2"] + 0.01 * v["b2"]})["b2"].diagnosis
    assert diagnosis == ("has an extra L2 term 0.01 * b2: the loss has no L2 term on b2 (biases are "
                         "usually not regularised)")


def test_a_mistake_in_a_checked_intermediates_own_formula_is_named_as_its_own():
    # dscores = probs - Y: the 1/N of the mean is missing in the formula for scores itself,
    # not in a step "further down" that the learner never wrote.
    loss, right, v = _notebook_net()
    report = mt.check_manual(loss, {"scores": v["probs"] - v["Y"]})
    assert report["scores"].diagnosis.startswith("is N = 8 times the expected gradient"), report


def test_a_weight_gradient_taken_from_the_relus_output_gradient_is_named_when_every_step_is_checked():
    # z1 is checked and right; dW1 = X.T @ dh skips the mask that dz1 has.
    loss, right, v = _notebook_net()
    report = mt.check_manual(loss, {**right, "W1": v["X"].T @ v["dh"] + v["reg"] * v["W1"]})
    assert report.first_wrong == "W1"
    diagnosis = report["W1"].diagnosis
    assert diagnosis.startswith("is computed from a wrong gradient") and "ReLU unmasked" in diagnosis


def test_a_mistake_at_a_wrong_checked_step_is_inherited_not_taken_as_a_formula_of_its_own():
    loss, right, v = _notebook_net()
    report = mt.check_manual(loss, {**right, "z1": v["dh"], "W1": v["X"].T @ v["dh"] + v["reg"] * v["W1"]})
    assert report.first_wrong == "z1" and "ReLU unmasked" in report["z1"].diagnosis
    assert report["W1"].diagnosis.startswith("may follow from the wrong gradient of 'z1'")
    assert "computed from a wrong gradient" not in report["W1"].diagnosis


@pytest.mark.parametrize("actual, words", [
    (lambda g: g.sum(axis=0), "the values are right: keep the summed axis (keepdims=True) or reshape it"),
    (lambda g: g, "one gradient per example, not summed over the batch; a bias gradient is "
                  "g.sum(axis=0, keepdims=True)"),
    (lambda g: g.sum(axis=1), "summed over axis 1 instead of the batch axis 0 (g.sum(axis=0, keepdims=Tr"),
    (lambda g: g.sum(axis=1, keepdims=True), "summed over axis 1 instead of the batch axis 0"),
], ids=["keepdims_dropped", "not_summed", "axis_1", "axis_1_keepdims"])
def test_a_notebook_style_row_bias_gets_advice_for_its_shape(actual, words):
    # The notebooks' biases are (1, C): their gradient is g.sum(axis=0, keepdims=True).
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4))
    W = leaf(rng, 4, 3, name="W")
    b = Tensor(np.zeros((1, 3)), requires_grad=True, name="b")
    upstream = rng.standard_normal((6, 3))
    out = Tensor(X) @ W + b
    assert mt.check_manual(out, {"b": upstream.sum(axis=0, keepdims=True)}, gradient=upstream)
    diagnosis = mt.check_manual(out, {"b": actual(upstream)}, gradient=upstream)["b"].diagnosis
    assert words in diagnosis, diagnosis


def test_values_in_the_wrong_shape_but_the_right_order_are_told_to_reshape_not_to_drop_keepdims():
    diagnosis = mt.compare_grads({"W": np.arange(6.0).reshape(2, 3)},
                                 {"W": np.arange(6.0).reshape(3, 2)})["W"].diagnosis
    assert diagnosis.endswith("the values are right, in the wrong shape: reshape it to (2, 3)")


def test_a_small_but_nonzero_expected_gradient_is_not_called_zero():
    expected = np.array([5e-9, -3e-9, 4e-9, 2e-9])
    diagnosis = mt.compare_grads({"W": expected}, {"W": 10 * expected})["W"].diagnosis
    assert diagnosis.startswith("is 10 times the expected gradient"), diagnosis


def test_the_fallback_names_the_worst_entry_out_of_tolerance_beside_a_larger_one_within():
    expected = np.ones(300)
    expected[5] = 1e-4
    actual = expected.copy()
    actual[0] += 1e-6  # the largest error, inside rtol * 1
    actual[5] += 1e-7  # smaller, but out of tolerance at 1e-4
    report = mt.compare_grads({"W": expected}, {"W": actual})
    diagnosis = report["W"].diagnosis
    assert diagnosis.startswith("is out of tolerance at 0.33% of its entries, by up to 1e-07 (at (5,):"), \
        diagnosis
    assert "larger errors elsewhere are within rtol" in diagnosis
    assert report["W"].worst_index == (0,)  # the table's largest error, which the sentence does not deny


def test_gradchecks_summary_counts_a_broken_backward_contract():
    def doubled_in_place(g, out, a):
        g *= 2  # mutates the upstream gradient: the contract forbids it
        return g

    op = mt.Op("dbl", lambda a: 2 * a, doubled_in_place)
    report = mt.gradcheck(lambda x: op(x), [Tensor(np.arange(3.0), requires_grad=True, name="x")])
    assert not report
    assert "the backward contract is broken: " in repr(report)
    assert "the upstream gradient is not mutated" in repr(report)


def test_gradcheck_blames_finite_differences_not_relu_at_its_kink():
    k = Tensor(np.array([1e-7, -1e-7, 1.0]), requires_grad=True, name="k")
    report = mt.gradcheck(lambda x: x.relu().sum(), [k])
    diagnosis = report["k"].diagnosis
    assert diagnosis.startswith("finite differences cannot judge relu in `v0 = relu(k)`: 2 of its inputs "
                                "lie"), diagnosis
    assert "its rule agrees everywhere else" in diagnosis
    assert "backward rule" not in diagnosis


def test_a_wrong_relu_rule_is_named_even_with_an_input_at_its_kink():
    flipped = mt.Op("relu", lambda x: np.maximum(x, 0), lambda g, out, x: -g * (x > 0))
    k = Tensor(np.array([0.0, -1.0, 1.0, 2.0]), requires_grad=True, name="k")
    diagnosis = mt.gradcheck(lambda x: flipped(x).sum(), [k])["k"].diagnosis
    assert diagnosis.startswith("the backward rule of relu in `v0 = relu(k)` is wrong"), diagnosis
    assert "kink" not in diagnosis


def test_check_manual_after_the_graph_was_released_says_what_to_do():
    x = Tensor([1.0, 2.0], requires_grad=True, name="x")
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"^check_manual: the output's graph was released by a backward"):
        mt.check_manual(loss, {"x": 2 * x.data})


def test_a_complex_gradient_is_refused_naming_its_dtype():
    with pytest.raises(TypeError, match=r"'a' is an array of dtype complex128, not an array of real numbers"):
        mt.compare_grads({"a": np.ones(2)}, {"a": np.ones(2) * 1j})
