"""Property-based tests: random shapes, broadcast pairs and random expression graphs."""

from __future__ import annotations

import numpy as np
from conftest import numeric_vjp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from microtensor import Tensor

FLOATS = st.floats(-3, 3, allow_nan=False, width=64)
SETTINGS = settings(max_examples=40, deadline=None)

BINARY = [
    (lambda a, b: a + b, np.add),
    (lambda a, b: a - b, np.subtract),
    (lambda a, b: a * b, np.multiply),
    (lambda a, b: a / (b * b + 1.0), lambda a, b: a / (b * b + 1.0)),
]


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       op=st.sampled_from(BINARY), data=st.data())
def test_binary_ops_broadcast_and_reduce_gradients_to_input_shapes(shapes, op, data):
    engine, reference = op
    a_val, b_val = (data.draw(hnp.arrays(np.float64, s, elements=FLOATS)) for s in shapes.input_shapes)
    upstream = data.draw(hnp.arrays(np.float64, shapes.result_shape, elements=FLOATS))
    a, b = Tensor(a_val.copy(), requires_grad=True), Tensor(b_val.copy(), requires_grad=True)
    out = engine(a, b)
    assert out.shape == shapes.result_shape
    out.backward(upstream)
    ga, gb = numeric_vjp(reference, [a_val, b_val], upstream)
    np.testing.assert_allclose(a.grad, ga, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.grad, gb, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(a.data, a_val)  # inputs are never mutated


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2,
                                                max_side=3), data=st.data())
def test_matmul_gradients_for_random_broadcast_batches(shapes, data):
    a_val, b_val = (data.draw(hnp.arrays(np.float64, s, elements=FLOATS)) for s in shapes.input_shapes)
    a, b = Tensor(a_val, requires_grad=True), Tensor(b_val, requires_grad=True)
    out = a @ b
    upstream = data.draw(hnp.arrays(np.float64, out.shape, elements=FLOATS))
    out.backward(upstream)
    ga, gb = numeric_vjp(np.matmul, [a_val, b_val], upstream)
    np.testing.assert_allclose(a.grad, ga, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.grad, gb, rtol=1e-5, atol=1e-7)


# Unary steps of a random graph: (engine, NumPy reference); all smooth on the sampled range.
UNARY = [
    (lambda x: x.tanh(), np.tanh),
    (lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (lambda x: x * x, lambda x: x * x),
    (lambda x: (x * x + 1.0).log(), lambda x: np.log(x * x + 1.0)),
    (lambda x: x.log_softmax(), lambda x: x - x.max(-1, keepdims=True)
     - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))),
    (lambda x: 0.5 - x, lambda x: 0.5 - x),
    (lambda x: x.mean(axis=-1, keepdims=True) * x, lambda x: x.mean(-1, keepdims=True) * x),
    (lambda x: x.T.T, lambda x: x),
]
COMBINE = [(lambda a, b: a + b, np.add), (lambda a, b: a * b, np.multiply)]


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3),
       steps=st.lists(st.tuples(st.sampled_from(UNARY), st.sampled_from(COMBINE),
                                st.integers(0, 10)), min_size=1, max_size=6),
       data=st.data())
def test_random_expression_graphs_match_finite_differences(shape, steps, data):
    """Each step applies a unary op to one earlier value and combines it with another,
    so values are reused (diamonds) and the graph is a random DAG."""
    x_val = data.draw(hnp.arrays(np.float64, shape, elements=FLOATS))

    def build(x, lib):
        values = [x]
        for (unary, combine, pick) in steps:
            u = unary[lib](values[pick % len(values)])
            values.append(combine[lib](u, values[(pick * 7 + 1) % len(values)]))
        return values[-1]

    x = Tensor(x_val, requires_grad=True)
    out = build(x, 0)
    upstream = data.draw(hnp.arrays(np.float64, out.shape, elements=FLOATS))
    np.testing.assert_allclose(out.data, build(x_val, 1), rtol=1e-10, atol=1e-12)
    out.backward(upstream)
    (expected,) = numeric_vjp(lambda v: build(v, 1), [x_val], upstream)
    # Finite differences lose digits in proportion to the gradient's size (x**8 at x=2, say),
    # so the absolute tolerance scales with it.
    np.testing.assert_allclose(x.grad, expected, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(expected).max()))
