"""detect_anomaly: the first op whose forward or backward makes NaN or inf is named, with
the line of the user's code that ran it and its input shapes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import microtensor as mt
from microtensor import Tensor

THIS_FILE = __file__


def test_forward_producing_inf_names_the_op_the_users_line_and_shapes():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    with mt.detect_anomaly(), pytest.raises(mt.AnomalyError) as caught:
        x.log()
    message = str(caught.value)
    assert message.startswith("log produced inf in its forward")
    assert f"{THIS_FILE}:" in message and "(2, 3)" in message


def test_forward_producing_nan_is_reported_as_nan():
    with mt.detect_anomaly(), pytest.raises(mt.AnomalyError, match="sub produced nan"), \
            np.errstate(invalid="ignore"):
        Tensor([np.inf]) - np.inf


def test_backward_producing_nan_names_the_op_and_where_it_was_created():
    x = Tensor([0.0, 4.0], requires_grad=True)
    with mt.detect_anomaly():
        line = _next_line()
        y = (x ** 0.5).sum()  # d/dx sqrt(x) at 0 is inf
        with pytest.raises(mt.AnomalyError) as caught:
            y.backward()
    message = str(caught.value)
    assert "the backward of pow produced inf in the gradient of its input 0" in message
    assert f"{THIS_FILE}:{line}" in message and "(2,)" in message


def test_under_create_graph_an_op_a_vjp_records_is_blamed_on_that_backward():
    x = Tensor([0.0, 4.0], requires_grad=True)
    with mt.detect_anomaly():
        line = _next_line()
        y = (x ** 0.5).sum()
        with pytest.raises(mt.AnomalyError) as caught:
            mt.grad(y, x, create_graph=True)  # the VJP's own pow makes the inf
    message = str(caught.value)
    assert message.startswith("the backward of pow produced inf (in the pow it computes)")
    assert f"{THIS_FILE}:{line}" in message and "(2,)" in message


def test_second_derivatives_inside_detect_anomaly_are_the_usual_ones():
    x = Tensor([1.0, 4.0], requires_grad=True)
    with mt.detect_anomaly():
        (first,) = mt.grad((x ** 3).sum(), x, create_graph=True)
        (second,) = mt.grad(first.sum(), x)
    np.testing.assert_allclose(second, 6 * x.data)


def test_backward_of_a_graph_built_outside_says_where_is_unknown():
    x = Tensor([0.0], requires_grad=True)
    y = (x ** 0.5).sum()
    with mt.detect_anomaly(), pytest.raises(mt.AnomalyError, match="ran outside detect_anomaly"):
        y.backward()


def test_outside_detect_anomaly_non_finite_values_pass_silently():
    x = Tensor([0.0], requires_grad=True)
    y = x.log().sum()
    y.backward()
    assert y.item() == -np.inf and x.grad[0] == np.inf


def test_finite_computations_inside_detect_anomaly_give_the_usual_gradients():
    x = Tensor([1.0, 2.0], requires_grad=True)
    with mt.detect_anomaly():
        (x.exp() * x).sum().backward()
    np.testing.assert_allclose(x.grad, np.exp(x.data) * (1 + x.data))


def test_detect_anomaly_works_as_a_decorator_and_only_in_its_thread():
    seen = {}

    def other_thread():
        seen["other"] = Tensor([0.0]).log().item()  # no detector here

    @mt.detect_anomaly()
    def inside():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        with pytest.raises(mt.AnomalyError):
            Tensor([0.0]).log()

    inside()
    assert seen["other"] == -np.inf
    assert Tensor([0.0]).log().item() == -np.inf  # switched off again after the call


def _next_line():
    import sys
    return sys._getframe(1).f_lineno + 1
