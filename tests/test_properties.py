"""Property-based tests: random shapes, broadcast pairs and random expression graphs.

A random graph (``graphs()``) starts from one to three leaves of mutually broadcastable random
shapes (0-d and size-1 axes included) and applies random ops to earlier values, or to new
leaves shaped to fit: element-wise functions, sums, means and maxima over random axes,
softmax and log_softmax over a random axis, reshapes, transposes by random permutations,
integer-array indexing with repeated indices, matmul, and broadcasting binary ops (``**``
with tensor exponents too). Every value no later op uses is weighted by a random array and
summed into the scalar the gradients are taken of, so every leaf gets a gradient.

Each op is planned against the float64 NumPy values, so it is applied only where it is
smooth: relu's input is shifted by a constant to stay 1e-2 from the kink, max's input gets a
constant tie-breaker when its maximum is not unique by 1e-3, pow's base and log's argument
are positive, and every value is finite and at most 50 in size (else the step is a tanh).
The kink and ties themselves are tested on their own, against the conventions PyTorch uses.
The same plan then runs in the engine (float64 and float32), in plain NumPy (for finite
differences) and in PyTorch, where installed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest
from conftest import numeric_vjp, requires_torch, torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from microtensor import Tensor

FLOATS = st.floats(-3, 3, allow_nan=False, width=64)
# derandomize: the same examples on every run, so CI passes or fails for the code, not the draw.
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
GRAPH_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)  # per featured op: 21 ops

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


# -- the three ways to run a graph: the engine, plain NumPy, PyTorch ---------------------------------
class EngineLib:
    """The engine's ops on Tensors; constants stay ndarrays of the graph's dtype."""

    @staticmethod
    def leaf(array: np.ndarray) -> Tensor:
        return Tensor(array, requires_grad=True)

    @staticmethod
    def const(array: Any, like: Tensor) -> np.ndarray:
        return np.asarray(array, dtype=like.dtype)

    tanh, sigmoid, exp, log, relu = (staticmethod(lambda x, f=f: getattr(x, f)())
                                     for f in ("tanh", "sigmoid", "exp", "log", "relu"))

    @staticmethod
    def reduce(how: str, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
        return getattr(x, how)(axis=axis, keepdims=keepdims)

    @staticmethod
    def softmax(x: Tensor, axis: int) -> Tensor:
        return x.softmax(axis=axis)

    @staticmethod
    def log_softmax(x: Tensor, axis: int) -> Tensor:
        return x.log_softmax(axis=axis)

    @staticmethod
    def reshape(x: Tensor, shape: tuple) -> Tensor:
        return x.reshape(shape)

    @staticmethod
    def transpose(x: Tensor, axes: tuple) -> Tensor:
        return x.transpose(axes)

    @staticmethod
    def index(x: Tensor, index: tuple) -> Tensor:
        return x[index]


class NumpyLib:
    """Plain NumPy, independent of the engine's forward: the finite differences' reference."""

    leaf = staticmethod(np.array)
    const = EngineLib.const
    tanh, exp, log = staticmethod(np.tanh), staticmethod(np.exp), staticmethod(np.log)
    sigmoid = staticmethod(lambda x: 1 / (1 + np.exp(-x)))
    relu = staticmethod(lambda x: np.where(x > 0, x, 0 * x))

    @staticmethod
    def reduce(how: str, x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
        return getattr(np, how)(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def softmax(x: np.ndarray, axis: int) -> np.ndarray:
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    @staticmethod
    def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    reshape = staticmethod(np.reshape)
    transpose = staticmethod(np.transpose)
    index = EngineLib.index


class TorchLib:
    """PyTorch (amax for max: it splits ties evenly, as the engine does)."""

    @staticmethod
    def leaf(array: np.ndarray) -> Any:
        return torch.tensor(array, requires_grad=True)

    @staticmethod
    def const(array: Any, like: Any) -> Any:
        return torch.as_tensor(np.asarray(array), dtype=like.dtype)

    tanh, sigmoid, exp, log, relu = (staticmethod(lambda x, f=f: getattr(torch, f)(x))
                                     for f in ("tanh", "sigmoid", "exp", "log", "relu"))

    @staticmethod
    def reduce(how: str, x: Any, axis: Any, keepdims: bool) -> Any:
        if x.ndim == 0:
            return x * 1
        dims = tuple(range(x.ndim)) if axis is None else axis
        return {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[how](x, dim=dims, keepdim=keepdims)

    @staticmethod
    def softmax(x: Any, axis: int) -> Any:
        return torch.softmax(x, dim=axis)

    @staticmethod
    def log_softmax(x: Any, axis: int) -> Any:
        return torch.log_softmax(x, dim=axis)

    reshape = EngineLib.reshape  # the same method call on a torch tensor

    @staticmethod
    def transpose(x: Any, axes: tuple) -> Any:
        return x.permute(axes)

    @staticmethod
    def index(x: Any, index: tuple) -> Any:
        return x[tuple(torch.as_tensor(i) if isinstance(i, np.ndarray) else i for i in index)]


def apply(lib: Any, op: str, args: list, p: dict) -> Any:
    """One op of a graph, in ``lib``; Python operators are shared by all three."""
    x = args[0]
    if op in ("tanh", "sigmoid", "exp"):
        return getattr(lib, op)(x)
    if op == "neg":
        return -x
    if op == "square":
        return x * x
    if op == "log":
        return lib.log(x if p["positive"] else x * x + 0.5)
    if op == "relu":
        return lib.relu(x + p["shift"])
    if op in ("sum", "mean"):
        return lib.reduce(op, x, p["axis"], p["keepdims"])
    if op == "max":
        return lib.reduce("max", x if p["jitter"] is None else x + lib.const(p["jitter"], x),
                          p["axis"], p["keepdims"])
    if op in ("softmax", "log_softmax"):
        return getattr(lib, op)(x, p["axis"])
    if op == "reshape":
        return lib.reshape(x, p["shape"])
    if op == "transpose":
        return lib.transpose(x, p["axes"])
    if op == "getitem":
        return lib.index(x, p["index"])
    b = args[1]
    if op == "matmul":
        return x @ b
    if op == "add":
        return x + b
    if op == "sub":
        return x - b
    if op == "mul":
        return x * b
    if op == "div":
        return x / b if p["plain"] else x / (b * b + 1.0)
    if op == "pow":
        return (x if p["positive"] else x * x + 0.5) ** (b * p["scale"])
    raise AssertionError(op)


# -- random graphs -----------------------------------------------------------------------------------
class Node(NamedTuple):
    op: str  # "leaf" (params {"leaf": k}) or an op of apply()
    args: tuple[int, ...]  # earlier nodes
    params: dict


class Graph(NamedTuple):
    leaves: list[np.ndarray]  # float64 values exact in float32, so both dtypes start from the same
    nodes: list[Node]
    weights: dict[int, np.ndarray]  # node -> its weight in the scalar output (nodes no op uses)

    def run(self, lib: Any, leaves: list) -> Any:
        values: list = []
        for node in self.nodes:
            if node.op == "leaf":
                values.append(leaves[node.params["leaf"]])
            else:
                values.append(apply(lib, node.op, [values[i] for i in node.args], node.params))
        total = 0
        for i, weight in self.weights.items():
            total = total + (values[i] * lib.const(weight, values[i])).sum()
        return total

    def gradients(self, lib: Any, dtype: Any = np.float64) -> list:
        """The gradient of every leaf, by ``lib``'s backward, as ndarrays (None for none)."""
        leaves = [lib.leaf(a.astype(dtype)) for a in self.leaves]
        out = self.run(lib, leaves)
        assert str(out.dtype).removeprefix("torch.") == np.dtype(dtype).name  # nothing widened on the way
        out.backward()
        return [None if t.grad is None else np.asarray(t.grad) for t in leaves]

    def finite_differences(self) -> list[np.ndarray]:
        return numeric_vjp(lambda *arrays: self.run(NumpyLib, list(arrays)), self.leaves, 1.0)


UNARY_OPS = ["tanh", "sigmoid", "exp", "log", "relu", "neg", "square", "sum", "mean", "max", "softmax",
             "log_softmax", "reshape", "transpose", "getitem"]
BINARY_OPS = ["add", "sub", "mul", "div", "pow", "matmul"]
OPS = UNARY_OPS + BINARY_OPS
MIN_NDIM = {"softmax": 1, "log_softmax": 1, "getitem": 1, "matmul": 1, "transpose": 2}
BOUND, KINK_MARGIN, TIE_MARGIN = 50.0, 1e-2, 1e-3


def reduced_rows(x: np.ndarray, axis: Any) -> np.ndarray:
    """``x`` as rows: one per output entry of a reduction over ``axis``, holding what it reduces."""
    if x.ndim == 0:
        return x.reshape(1, 1)
    axes = range(x.ndim) if axis is None else np.atleast_1d(axis) % x.ndim
    axes = sorted(set(int(a) for a in axes))
    moved = np.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim))
    return moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))


def unique_max(x: np.ndarray, axis: Any) -> bool:
    rows = np.sort(reduced_rows(x, axis), axis=-1)
    return rows.shape[-1] < 2 or bool(np.all(rows[:, -1] - rows[:, -2] > TIE_MARGIN))


class Builder:
    """Draws a graph one op at a time, keeping the float64 NumPy value of every node."""

    def __init__(self, draw: Any) -> None:
        self.draw, self.leaves, self.nodes, self.values = draw, [], [], []
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def add(self, op: str, args: tuple, params: dict, value: np.ndarray) -> int:
        self.nodes.append(Node(op, args, params))
        self.values.append(value)
        return len(self.nodes) - 1

    def leaf(self, shape: tuple) -> int:
        value = self.rng.uniform(-2, 2, shape).astype(np.float32).astype(np.float64)
        self.leaves.append(value)
        return self.add("leaf", (), {"leaf": len(self.leaves) - 1}, value)

    def fresh_shape(self, min_dims: int) -> tuple:
        return self.draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, max_side=3))

    def step(self, op: str) -> None:
        need = MIN_NDIM.get(op, 0)
        fits = [i for i, v in enumerate(self.values) if v.ndim >= need]
        if op == "transpose" and not any(self.values[i].ndim == 3 for i in fits) and self.draw(st.booleans()):
            fits = []  # a real 3-D permutation, now and then
        if fits:
            i = self.draw(st.sampled_from(fits))
        else:
            i = self.leaf(self.fresh_shape(3 if op == "transpose" else need))
        x = self.values[i]
        args, params = getattr(self, "plan_" + op, self.plan_plain)(i, x)
        value = None if params is None else apply(NumpyLib, op, [self.values[j] for j in args], params)
        if value is None or value.size == 0 or not np.isfinite(value).all() or np.abs(value).max() > BOUND:
            op, args, params, value = "tanh", (i,), {}, np.tanh(x)
        self.add(op, args, params, value)

    # Each plan returns (arguments, parameters), or (_, None) where the op is not smooth here.
    def plan_plain(self, i: int, x: np.ndarray) -> tuple:
        return (i,), {}

    def plan_log(self, i: int, x: np.ndarray) -> tuple:
        return (i,), {"positive": bool(x.size) and x.min() > 0.1}

    def plan_relu(self, i: int, x: np.ndarray) -> tuple:
        for shift in (0.0, 0.3, -0.3, 0.7, -0.7, 0.15, -0.15):
            if np.all(np.abs(x + shift) > KINK_MARGIN):
                return (i,), {"shift": shift}
        return (i,), None

    def an_axis(self, x: np.ndarray) -> Any:
        if x.ndim == 0:
            return None
        chosen = st.lists(st.integers(0, x.ndim - 1), min_size=1, max_size=x.ndim, unique=True)
        axis = self.draw(st.one_of(st.integers(-x.ndim, x.ndim - 1), chosen.map(tuple), st.none()))
        if isinstance(axis, tuple) and self.draw(st.booleans()):
            axis = tuple(a - x.ndim for a in axis)  # negative axes too
        return axis

    def plan_sum(self, i: int, x: np.ndarray) -> tuple:
        return (i,), {"axis": self.an_axis(x), "keepdims": self.draw(st.booleans())}

    plan_mean = plan_sum

    def plan_max(self, i: int, x: np.ndarray) -> tuple:
        params = {"axis": self.an_axis(x), "keepdims": self.draw(st.booleans()), "jitter": None}
        for _ in range(5):
            if unique_max(x if params["jitter"] is None else x + params["jitter"], params["axis"]):
                return (i,), params
            params["jitter"] = self.rng.permutation(x.size).reshape(x.shape) * (0.5 / x.size)
        return (i,), None

    def plan_softmax(self, i: int, x: np.ndarray) -> tuple:
        return (i,), {"axis": self.draw(st.integers(-x.ndim, x.ndim - 1))}

    plan_log_softmax = plan_softmax

    def plan_reshape(self, i: int, x: np.ndarray) -> tuple:
        n = x.size
        shapes = [(n,), (-1,), x.shape[::-1], (1, n), (n, 1), (-1, 1)]
        shapes += [(d, n // d) for d in range(2, n) if n % d == 0]
        if x.ndim <= 3:
            shapes += [(1,) + x.shape, x.shape + (1,)]
        return (i,), {"shape": self.draw(st.sampled_from(shapes))}

    def plan_transpose(self, i: int, x: np.ndarray) -> tuple:
        axes = self.draw(st.permutations(range(x.ndim)))
        negative = self.draw(st.lists(st.booleans(), min_size=x.ndim, max_size=x.ndim))
        return (i,), {"axes": tuple(a - x.ndim if neg else a for a, neg in zip(axes, negative))}

    def plan_getitem(self, i: int, x: np.ndarray) -> tuple:
        axis = self.draw(st.integers(0, x.ndim - 1))
        n = x.shape[axis]
        indices = st.lists(st.integers(-n, n - 1), min_size=1, max_size=5).map(lambda v: np.array(v, np.intp))
        kind = self.draw(st.sampled_from(["array", "array", "two arrays", "int", "slice"]))
        if kind == "two arrays" and axis + 1 < x.ndim:  # paired: x[.., i, j] for (i, j) in zip
            first = self.draw(indices)
            m = x.shape[axis + 1]
            second = self.rng.integers(-m, m, first.size)
            return (i,), {"index": (slice(None),) * axis + (first, second)}
        ends = st.one_of(st.none(), st.integers(-n, n))
        forward = st.tuples(ends, ends, st.sampled_from([None, 1, 2])).map(lambda s: slice(*s))  # as torch
        part = {"int": st.integers(-n, n - 1), "slice": forward}.get(kind, indices)
        return (i,), {"index": (slice(None),) * axis + (self.draw(part),)}

    def partner(self, i: int, x: np.ndarray) -> int:
        """An earlier value that broadcasts with ``x``, or a new leaf of a shape that does."""
        def fits(v: np.ndarray) -> bool:
            try:
                together = np.broadcast_shapes(x.shape, v.shape)
                return len(together) <= 4 and np.prod(together) <= 243
            except ValueError:
                return False
        earlier = [j for j, v in enumerate(self.values) if fits(v)]
        if self.draw(st.booleans()):
            return self.draw(st.sampled_from(earlier))
        shapes = hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=x.shape, max_dims=4, max_side=3)
        return self.leaf(self.draw(shapes).input_shapes[0])

    def plan_binary(self, i: int, x: np.ndarray) -> tuple:
        j = self.partner(i, x)
        return ((i, j) if self.draw(st.booleans()) else (j, i)), {}

    plan_add = plan_sub = plan_mul = plan_binary

    def plan_div(self, i: int, x: np.ndarray) -> tuple:
        args, _ = self.plan_binary(i, x)
        return args, {"plain": bool(np.all(np.abs(self.values[args[1]]) > 0.2))}

    def plan_pow(self, i: int, x: np.ndarray) -> tuple:
        args, _ = self.plan_binary(i, x)
        base, exponent = (self.values[k] for k in args)
        params = {"positive": bool(np.all(base > 0.2))}
        base = base if params["positive"] else base * base + 0.5
        for scale in (1.0, 0.5, 0.1):
            if np.all(np.abs(np.power(base, exponent * scale)) < BOUND):
                return args, {**params, "scale": scale}
        return args, None

    def plan_matmul(self, i: int, x: np.ndarray) -> tuple:
        k = self.draw(st.integers(1, 3))
        if self.draw(st.booleans()):  # x @ w: w a vector, a matrix or a (broadcast) batch of them
            n = x.shape[-1]
            batches = {1: [(), (1,), (2,)], 2: [(), (1,), (2,)], 3: [(), (1,), x.shape[:1]]}.get(x.ndim, [()])
            batch = self.draw(st.sampled_from(batches))
            shape = self.draw(st.sampled_from([(n,), (n, k), batch + (n, k)]))
            return (i, self.leaf(shape)), {}
        m = x.shape[-2] if x.ndim >= 2 else x.shape[0]  # w @ x
        return (self.leaf(self.draw(st.sampled_from([(m,), (k, m)]))), i), {}

    def graph(self) -> Graph:
        used = {j for node in self.nodes for j in node.args}
        weights = {}
        for i, value in enumerate(self.values):
            if i not in used:
                weights[i] = self.rng.uniform(-1, 1, value.shape).astype(np.float32).astype(np.float64)
        return Graph(self.leaves, self.nodes, weights)


@st.composite
def graphs(draw: Any, featured: str | None = None, max_steps: int = 6) -> Graph:
    """A random graph; with ``featured``, one that applies that op at least once (almost always:
    where it is not smooth it becomes a tanh)."""
    builder = Builder(draw)
    count = draw(st.integers(1, 3))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, min_dims=0, max_dims=3, max_side=3))
    for shape in shapes.input_shapes:
        builder.leaf(shape)
    ops = draw(st.lists(st.sampled_from(OPS), max_size=max_steps))
    if featured:
        ops.insert(draw(st.integers(0, len(ops))), featured)
    for op in ops:
        builder.step(op)
    return builder.graph()


def scale_of(grads: list) -> float:
    return max([1.0] + [float(np.abs(g).max(initial=0)) for g in grads if g is not None])


@pytest.mark.parametrize("featured", OPS)
@GRAPH_SETTINGS
@given(data=st.data())
def test_random_graphs_match_finite_differences(featured, data):
    """Every leaf's gradient against central differences of the NumPy forward, in float64."""
    graph = data.draw(graphs(featured))
    got = graph.gradients(EngineLib)
    expected = graph.finite_differences()
    scale = scale_of(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g is not None and g.shape == e.shape and g.dtype == np.float64, k
        # Central differences lose digits in proportion to the values (up to 50) and gradients.
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6 * scale, err_msg=f"leaf {k}")


@pytest.mark.parametrize("featured", OPS)
@settings(GRAPH_SETTINGS, max_examples=12)
@given(data=st.data())
def test_random_graphs_in_float32_match_float64_to_float32_precision(featured, data):
    """The same graph from the same (float32-exact) leaves: float32 gradients, equal to the
    float64 ones to float32 precision relative to the gradients' scale."""
    graph = data.draw(graphs(featured))
    wide, narrow = graph.gradients(EngineLib), graph.gradients(EngineLib, np.float32)
    scale = scale_of(wide)
    for k, (g64, g32) in enumerate(zip(wide, narrow)):
        assert g32 is not None and g32.dtype == np.float32 and g32.shape == g64.shape, k
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * scale, err_msg=f"leaf {k}")


@requires_torch
@pytest.mark.parametrize("featured", OPS)
@settings(GRAPH_SETTINGS, max_examples=6)
@given(data=st.data())
def test_random_graphs_match_pytorch(featured, data):
    graph = data.draw(graphs(featured))
    got, expected = graph.gradients(EngineLib), graph.gradients(TorchLib)
    scale = scale_of(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-11 * scale, err_msg=f"leaf {k}")


# -- the kink and ties, where finite differences have no answer: PyTorch's conventions -------------------
def axes_of(shape: tuple) -> st.SearchStrategy:
    """None, or an axis, or a tuple of axes, of ``shape`` (only None for a 0-d array)."""
    if not shape:
        return st.none()
    chosen = st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple)
    return st.one_of(st.integers(-len(shape), len(shape) - 1), chosen, st.none())


def reductions(min_dims: int = 0) -> st.SearchStrategy:
    """(shape, axis, keepdims) of a reduction."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=3, max_side=4).flatmap(
        lambda shape: st.tuples(st.just(shape), axes_of(shape), st.booleans()))


TIED = st.sampled_from([-1.0, 0.0, 0.5, 2.0])  # few values: ties in most rows


@SETTINGS
@given(reduction=reductions(), data=st.data())
def test_max_splits_the_gradient_evenly_between_tied_maxima(reduction, data):
    """Off the maximum the gradient is 0; the tied maxima of a row share its upstream gradient
    equally (PyTorch's amax), so each row's gradient sums to its upstream."""
    shape, axis, keepdims = reduction
    x_val = data.draw(hnp.arrays(np.float64, shape, elements=TIED))
    x = Tensor(x_val, requires_grad=True)
    out = x.max(axis=axis, keepdims=keepdims)
    upstream = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.5, 2, out.shape)
    out.backward(upstream)
    rows, grads = reduced_rows(x_val, axis), reduced_rows(x.grad, axis)
    for row, grad, up in zip(rows, grads, upstream.reshape(-1)):
        top = row == row.max()
        np.testing.assert_array_equal(grad[~top], 0)
        np.testing.assert_allclose(grad[top], up / top.sum(), rtol=1e-12)


@requires_torch
@SETTINGS
@given(reduction=reductions(min_dims=1), data=st.data())
def test_max_with_ties_matches_pytorch_amax(reduction, data):
    shape, axis, keepdims = reduction
    x_val = data.draw(hnp.arrays(np.float64, shape, elements=TIED))
    out_shape = np.max(x_val, axis=axis, keepdims=keepdims).shape
    upstream = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.5, 2, out_shape)
    x, xt = Tensor(x_val, requires_grad=True), torch.tensor(x_val, requires_grad=True)
    x.max(axis=axis, keepdims=keepdims).backward(upstream)
    TorchLib.reduce("max", xt, axis, keepdims).backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12)


KINKED = st.one_of(st.sampled_from([0.0, -0.0]), st.floats(-3, 3, width=64))


@SETTINGS
@given(x_val=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=KINKED),
       dtype=st.sampled_from([np.float64, np.float32]), data=st.data())
def test_relu_gradient_is_the_upstream_where_positive_and_zero_elsewhere_kink_included(x_val, dtype, data):
    """relu's derivative is 1 for x > 0 and 0 for x <= 0: at the kink too, as in PyTorch."""
    x_val = x_val.astype(dtype)
    x_val.reshape(-1)[:1] = 0.0  # the kink, always
    upstream = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.5, 2, x_val.shape)
    x = Tensor(x_val, requires_grad=True)
    x.relu().backward(upstream.astype(dtype))
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad, np.where(x_val > 0, upstream.astype(dtype), 0))
    if torch is not None:
        xt = torch.tensor(x_val, requires_grad=True)
        torch.relu(xt).backward(torch.tensor(upstream.astype(dtype)))
        np.testing.assert_array_equal(x.grad, xt.grad.numpy())
