"""Fuzzing: hypothesis drives random op sequences, shapes and bad values (nan, inf, 1e4,
empty and mismatched shapes, out-of-range axes, integers, booleans, strings, None, ...)
through the public API. Every step ends in one of two ways only: the result NumPy gives,
or a documented error (ValueError, TypeError, IndexError, RuntimeError) whose message
starts with the op's name. Nothing else escapes, not even a warning. The example counts are
in docs/reliability.md."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import microtensor as mt
import nn
from microtensor import Tensor
from nn import functional as F

DOCUMENTED = (ValueError, TypeError, IndexError, RuntimeError)
OP_SEQUENCE_EXAMPLES = 500
LOSS_EXAMPLES = 300
STATE_EXAMPLES = 100
# derandomize: the same examples on every run, so CI passes or fails for the code, not the draw.
FUZZ = dict(deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def reference(compute: Callable[..., Any], *args: Any, **params: Any) -> tuple[Any, BaseException | None]:
    """NumPy's answer (or its exception), with NumPy's warnings silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return np.asarray(compute(*args, **params)), None
        except (ValueError, TypeError, IndexError) as err:
            return None, err


def engine(compute: Callable[..., Any], *args: Any, **params: Any) -> tuple[Any, BaseException | None]:
    """The engine's answer, or its documented error. NumPy's floating-point conditions (inf - inf,
    x / 0, exp overflow) follow NumPy and are silenced, as for the reference; any other warning
    is raised, and fails the test."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("error")
        try:
            return compute(*args, **params), None
        except DOCUMENTED as err:
            return None, err


def assert_documented_error(err: BaseException | None, prefix: str) -> None:
    assert err is not None, f"{prefix} accepted what NumPy refused"
    assert isinstance(err, DOCUMENTED)
    assert str(err).startswith(prefix + ":"), f"{type(err).__name__}: {err}"


# -- values ---------------------------------------------------------------------------------------
SPECIAL = [0.0, -0.0, 1e4, -1e4, np.inf, -np.inf, np.nan]


def floats(dtype: Any) -> st.SearchStrategy:
    width = 32 if dtype == np.float32 else 64
    return st.one_of(st.floats(-10, 10, width=width), st.sampled_from(SPECIAL))


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def leaves(draw: Any) -> Tensor:
    """A leaf: floating (requiring grad or not), integer or boolean; any shape, empty included."""
    kind = draw(st.sampled_from(["float64", "float32", "float64", "int64", "bool"]))
    shape = draw(SHAPES)
    if kind == "int64":
        return Tensor(draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3))))
    if kind == "bool":
        return Tensor(draw(hnp.arrays(np.bool_, shape)))
    data = draw(hnp.arrays(np.dtype(kind), shape, elements=floats(np.dtype(kind))))
    return Tensor(data, requires_grad=draw(st.booleans()))


ODD_CONSTANTS = [None, "x", {}, [1.0, 2.0], [[1.0], [1.0, 2.0]], 2, -1.5, 1e4, np.inf, 3j]


# -- the ops: (engine on Tensors, NumPy reference on arrays, how to draw their parameters) ---------
class Step(NamedTuple):
    name: str
    arity: int
    run: Callable[..., Any]
    numpy: Callable[..., Any]
    params: Callable[[Any, tuple], dict]  # (draw, the first operand's shape) -> keyword parameters
    exact: bool = True  # the engine calls this very NumPy function: equal bit for bit
    reflected: str = ""  # the op Python runs instead when the operands come swapped (2 > t is t < 2)


def no_params(draw: Any, shape: tuple) -> dict:
    return {}


def an_axis(draw: Any, shape: tuple) -> dict:
    return {"axis": draw(st.integers(-len(shape) - 1, len(shape)))}  # sometimes out of range


def a_reduction(draw: Any, shape: tuple) -> dict:
    axis = draw(st.one_of(st.none(), st.integers(-4, 3), st.tuples(st.integers(-3, 3))))
    return {"axis": axis, "keepdims": draw(st.booleans())}


def a_shape(draw: Any, shape: tuple) -> dict:
    size = int(np.prod(shape))
    same = draw(st.sampled_from([(size,), (-1,), (1, -1), (size, 1)]))
    return {"shape": draw(st.one_of(st.just(same), st.tuples(st.integers(0, 5), st.integers(-1, 3))))}


def axes(draw: Any, shape: tuple) -> dict:
    permutation = draw(st.permutations(range(len(shape))))
    return {"axes": tuple(draw(st.one_of(st.just(permutation), st.lists(st.integers(-3, 3), max_size=3))))}


def an_index(draw: Any, shape: tuple) -> dict:
    return {"index": draw(st.one_of(st.integers(-5, 5), st.slices(5), st.just(Ellipsis),
                                    st.lists(st.integers(-4, 4), max_size=3).map(np.array),
                                    st.tuples(st.integers(-3, 3), st.slices(4))))}


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Independent of the engine's shift (often one maximum for the whole array): each row
    shifted by its own maximum, then log-sum-exp by pairwise logaddexp. Unshifted, logits of
    1e10 lose seven digits to cancellation in x - logsumexp(x)."""
    top = np.max(x, axis=axis, keepdims=True)  # an empty axis has no max: NumPy's error (documented)
    with np.errstate(invalid="ignore"):  # inf - inf: nan, as the engine gives
        shifted = x - top
    return shifted - np.logaddexp.reduce(shifted, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


STEPS = [
    Step("add", 2, lambda a, b: a + b, np.add, no_params),
    Step("sub", 2, lambda a, b: a - b, np.subtract, no_params),
    Step("mul", 2, lambda a, b: a * b, np.multiply, no_params),
    Step("div", 2, lambda a, b: a / b, np.true_divide, no_params),
    Step("pow", 2, lambda a, b: a ** b, np.power, no_params),
    Step("matmul", 2, lambda a, b: a @ b, np.matmul, no_params),
    Step("greater", 2, lambda a, b: a > b, np.greater, no_params, reflected="less"),
    Step("neg", 1, lambda a: -a, np.negative, no_params),
    Step("relu", 1, mt.relu, lambda a: np.maximum(a, 0), no_params),
    Step("tanh", 1, mt.tanh, np.tanh, no_params),
    Step("exp", 1, mt.exp, np.exp, no_params),
    Step("log", 1, mt.log, np.log, no_params),
    Step("sigmoid", 1, mt.sigmoid, sigmoid, no_params, exact=False),
    Step("log_softmax", 1, lambda a, axis: mt.log_softmax(a, axis=axis), log_softmax, an_axis, exact=False),
    Step("softmax", 1, lambda a, axis: mt.softmax(a, axis=axis),
         lambda a, axis: np.exp(log_softmax(a, axis)), an_axis, exact=False),
    Step("sum", 1, lambda a, **p: mt.sum(a, **p), lambda a, **p: np.sum(a, **p), a_reduction),
    Step("mean", 1, lambda a, **p: mt.mean(a, **p), lambda a, **p: np.mean(a, **p), a_reduction),
    Step("max", 1, lambda a, **p: mt.max(a, **p), lambda a, **p: np.max(a, **p), a_reduction),
    Step("reshape", 1, lambda a, shape: mt.reshape(a, shape=shape), lambda a, shape: np.reshape(a, shape),
         a_shape),
    Step("transpose", 1, lambda a, axes: mt.transpose(a, axes=axes), lambda a, axes: np.transpose(a, axes),
         axes),
    Step("getitem", 1, lambda a, index: a[index], lambda a, index: a[index], an_index),
]


def assert_same_as_numpy(step: Step, got: Tensor, expected: np.ndarray, finite_inputs: bool) -> None:
    assert isinstance(got, Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
    if step.exact or got.dtype.kind not in "fc":
        np.testing.assert_array_equal(got.data, expected)
        return
    # The engine's formula is not the reference's: they agree where both are finite, the
    # engine never gives a finite number where the reference has none, and from finite
    # inputs it is finite wherever the reference is (at inf inputs, nan is an honest answer).
    ours, theirs = np.isfinite(got.data), np.isfinite(expected)
    assert not (ours & ~theirs).any()
    assert not finite_inputs or np.array_equal(ours, theirs)
    loose = np.finfo(got.dtype).eps ** 0.5
    np.testing.assert_allclose(got.data[ours & theirs], expected[ours & theirs], rtol=loose, atol=loose)


def finite_floats(args: list) -> tuple[bool, bool]:
    """Whether every operand is a floating array (or number), and whether all of them are finite."""
    arrays = [np.asarray(as_array(a)) for a in args if isinstance(a, (Tensor, np.ndarray, float, int))]
    floating = len(arrays) == len(args) and all(a.dtype.kind == "f" for a in arrays)
    return floating, floating and all(np.isfinite(a).all() for a in arrays)


def operand(draw: Any, values: list, first: Tensor, step: Step) -> Any:
    """Mostly an earlier value, or a new one that fits the first operand; sometimes an ndarray,
    or an odd Python constant."""
    choice = draw(st.sampled_from(["value", "value", "fitting", "fitting", "array", "constant"]))
    picked = values[draw(st.integers(0, len(values) - 1))]
    if choice == "fitting":
        shape = first.shape[-1:] + (draw(st.integers(1, 3)),) if step.name == "matmul" else first.shape
        dtype = first.dtype if first.dtype.kind == "f" else np.dtype(np.float64)
        return Tensor(draw(hnp.arrays(dtype, shape, elements=floats(dtype))), requires_grad=True)
    if choice == "array":
        return picked.data.copy()
    if choice == "constant":
        return draw(st.sampled_from(ODD_CONSTANTS))
    return picked


def as_array(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


class Done(NamedTuple):
    """A step that gave NumPy's result: replayed in NumPy for the finite differences."""
    step: Step
    args: list
    params: dict
    got: Tensor


def run_backward(out: Tensor, leaves_: list[Tensor], done: list[Done], draw: Any) -> None:
    """Backward with a random upstream gradient: gradients of the leaves' shapes and dtypes, or
    a documented error (a complex or object output refuses); and, for a finite float64 program
    away from kinks, ties and poles, gradients equal to finite differences."""
    upstream = draw(hnp.arrays(np.float64, out.shape, elements=st.floats(-2, 2)))
    check_gradient_values(out, leaves_, done, draw(st.integers(0, 2**32 - 1)))  # first: it needs the graph
    _, err = engine(out.backward, upstream)
    if err is not None:
        assert out.dtype.kind != "f" and str(err).startswith("backward:"), f"{type(err).__name__}: {err}"
        return
    for leaf in leaves_:
        if leaf.grad is not None:
            assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == leaf.dtype


def reduced_rows(x: Any, axis: Any) -> np.ndarray:
    """``x`` as rows: one per entry of a reduction over ``axis``, holding what that entry reduces."""
    x = np.asarray(x)
    if x.ndim == 0:
        return x.reshape(1, 1)
    axes = range(x.ndim) if axis is None else sorted({a % x.ndim for a in np.atleast_1d(axis)})
    moved = np.moveaxis(x, list(axes), list(range(x.ndim - len(axes), x.ndim)))
    return moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))  # (a max over nothing is refused)


def smooth(name: str, operands: list, params: dict, margin: float = 1e-4) -> bool:
    """Whether a step is differentiable, by a margin, at these NumPy operands: off relu's kink,
    off ties of max and of comparisons, off the poles of log and 1/x, pow on positive bases."""
    with np.errstate(all="ignore"):
        if name == "relu":
            return bool(np.all(np.abs(operands[0]) > margin))
        if name == "greater":
            return bool(np.all(np.abs(np.subtract(*operands, dtype=np.float64)) > margin))
        if name in ("log", "pow"):
            return bool(np.all(np.asarray(operands[0], dtype=np.float64) > margin))
        if name == "div":
            return bool(np.all(np.abs(np.asarray(operands[1], dtype=np.float64)) > margin))
        if name == "max":
            rows = np.sort(reduced_rows(np.asarray(operands[0], dtype=np.float64), params["axis"]), axis=-1)
            return rows.shape[-1] < 2 or bool(np.all(rows[:, -1] - rows[:, -2] > margin))
    return True


def check_gradient_values(out: Tensor, made: list[Tensor], done: list[Done], seed: int) -> None:
    """The leaves' gradients (``mt.grad``, random upstream gradient, graph kept) against central
    differences of the program replayed in NumPy, along one random direction (a projection, as
    in gradcheck's fast mode: four replays, whatever the sizes). Only for float64 programs whose
    every value is finite and at most 1e4 in size, every step smooth where it is taken, and
    finite differences at two step sizes that agree."""
    leaves = list({id(t): t for t in made if t.requires_grad}.values())  # a leaf may be reused
    floating = [t for t in leaves + [item.got for item in done] if t.dtype.kind == "f"]
    if not leaves or any(t.dtype != np.float64 for t in floating):
        return
    operands = [np.asarray(as_array(a)) for item in done for a in item.args]
    if any(a.dtype.kind not in "fiub" or not np.isfinite(a).all() for a in operands):
        return  # an infinite constant, or a complex one compared (3j > x: NumPy orders complex numbers)
    if not all(np.isfinite(t.data).all() and np.abs(t.data).max(initial=0) <= 1e4 for t in floating):
        return

    def replay(arrays: list[np.ndarray], check: bool = False) -> np.ndarray | None:
        values = {id(leaf): array for leaf, array in zip(leaves, arrays)}
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for item in done:
                inputs = [values.get(id(a), a.data) if isinstance(a, Tensor) else a for a in item.args]
                if check and not smooth(item.step.name, inputs, item.params):
                    return None
                values[id(item.got)] = np.asarray(item.step.numpy(*inputs, **item.params))
        return values[id(out)]

    base = [leaf.data.copy() for leaf in leaves]
    if replay(base, check=True) is None:
        return
    rng = np.random.default_rng(seed)
    upstream = rng.standard_normal(out.shape)
    grads, err = engine(mt.grad, out, leaves, upstream, retain_graph=True)
    assert err is None, f"{type(err).__name__}: {err}"
    directions = [rng.standard_normal(a.shape) * np.maximum(1, np.abs(a)) for a in base]
    terms = [g * d for g, d in zip(grads, directions) if g is not None]
    analytic = sum(float(np.sum(t)) for t in terms)

    def slope(h: float) -> tuple[float, float]:
        """The central difference, and how much rounding (eps * the summed outputs / step) is in it."""
        plus, minus = (upstream * replay([a + sign * h * d for a, d in zip(base, directions)])
                       for sign in (1, -1))
        rounding = 1e-15 * float(np.sum(np.abs(plus)) + np.sum(np.abs(minus))) / h
        return float((np.sum(plus) - np.sum(minus)) / (2 * h)), rounding

    (coarse, rounding), (fine, _) = slope(1e-5), slope(2.5e-6)
    tolerance = 1e-6 * (abs(coarse) + sum(float(np.sum(np.abs(t))) for t in terms)) + 4 * rounding
    if not np.isfinite(coarse) or abs(coarse - fine) > tolerance:
        return  # a kink within the step's reach, or finite differences out of digits
    event("backward: gradient values checked against finite differences")
    assert abs(analytic - coarse) <= 10 * tolerance, \
        f"the gradients give {analytic} along a random direction, finite differences {coarse}"


@settings(max_examples=OP_SEQUENCE_EXAMPLES, **FUZZ)
@given(start=st.lists(leaves(), min_size=1, max_size=3), length=st.integers(1, 6), data=st.data())
def test_random_op_sequences_give_numpys_result_or_a_documented_error(start, length, data):
    values, arrays, made = list(start), [t.data.copy() for t in start], list(start)
    done: list[Done] = []
    draw = data.draw
    for _ in range(length):
        step = draw(st.sampled_from(STEPS))
        first = values[draw(st.integers(0, len(values) - 1))]
        params = step.params(draw, first.shape)
        args = [first] + [operand(draw, values, first, step) for _ in range(step.arity - 1)]
        made += [a for a in args[1:] if isinstance(a, Tensor) and a.is_leaf]
        swapped = step.arity == 2 and draw(st.booleans())
        if swapped:
            args.reverse()  # constants and arrays on the left too
        expected, refused = reference(step.numpy, *[as_array(a) for a in args], **params)
        got, err = engine(step.run, *args, **params)
        floating, finite = finite_floats(args)
        name = step.reflected if swapped and not isinstance(args[0], Tensor) and step.reflected else step.name
        if refused is not None or (err is not None and not step.exact and not floating):
            assert_documented_error(err, name)  # (the engine's formula may refuse odd dtypes)
            continue
        assert err is None, f"{step.name} refused what NumPy computes: {type(err).__name__}: {err}"
        assert_same_as_numpy(step, got, expected, finite)
        if got.dtype.kind in "fiub":
            values.append(got)
            arrays.append(expected)
            done.append(Done(step, args, params, got))
    for i, leaf in enumerate(start):
        np.testing.assert_array_equal(leaf.data, arrays[i])  # nothing mutated its inputs
    graded = [v for v in values if v.requires_grad]
    if graded:
        run_backward(graded[-1], made, done, draw)


# -- losses with bad targets ----------------------------------------------------------------------
@st.composite
def targets(draw: Any, n: int, classes: int) -> Any:
    kind = draw(st.sampled_from(["labels", "labels", "one-hot", "floats", "bools", "2-D labels", "list"]))
    rows = draw(st.sampled_from([n, n, max(n - 1, 0), n + 1]))
    if kind == "labels":
        return draw(hnp.arrays(np.int64, rows, elements=st.integers(-2, classes + 1)))
    if kind == "one-hot":
        width = draw(st.sampled_from([classes, classes, classes + 1, max(classes - 1, 0)]))
        return draw(hnp.arrays(np.float64, (rows, width), elements=st.sampled_from([0.0, 0.5, 1.0])))
    if kind == "floats":
        return draw(hnp.arrays(np.float64, rows, elements=st.floats(0, 3)))
    if kind == "bools":
        return draw(hnp.arrays(np.bool_, rows))
    if kind == "2-D labels":
        return draw(hnp.arrays(np.int64, (rows, 1), elements=st.integers(0, classes - 1 if classes else 0)))
    return draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))


def cross_entropy_reference(logits: np.ndarray, target: Any) -> float:
    logp = log_softmax(logits.astype(np.float64), -1)
    target = np.asarray(target)
    if target.ndim == 1:
        return -logp[np.arange(len(logits)), target].mean()
    weighted = np.where(target != 0, target * np.where(target != 0, logp, 0), 0)
    return -weighted.sum() / len(logits)


def valid(logits: np.ndarray, target: Any) -> bool:
    """Whether the loss is defined: (N, C) logits with N, C > 0 and int labels in [0, C) or (N, C) rows."""
    target = np.asarray(target)
    if logits.ndim != 2 or logits.size == 0:
        return False
    n, classes = logits.shape
    if target.ndim == 1 and target.dtype.kind in "iu":
        return len(target) == n and bool(np.all((target >= 0) & (target < classes)))
    return target.shape == logits.shape and target.dtype.kind in "fiub"


@settings(max_examples=LOSS_EXAMPLES, **FUZZ)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
       dtype=st.sampled_from([np.float32, np.float64]), loss=st.sampled_from(["cross_entropy", "nll_loss"]),
       data=st.data())
def test_losses_give_the_reference_value_or_an_error_naming_the_loss(shape, dtype, loss, data):
    values = data.draw(hnp.arrays(dtype, shape, elements=st.one_of(st.floats(-5, 5, width=32),
                                                                     st.sampled_from([1e4, -1e4, -np.inf]))))
    target = data.draw(targets(shape[0], shape[-1] if len(shape) > 1 else 0))
    logits = Tensor(values, requires_grad=True)
    def run() -> mt.Tensor:
        if loss == "cross_entropy":
            return F.cross_entropy(logits, target)
        return F.nll_loss(logits.log_softmax() if len(shape) > 1 else logits, target)

    got, err = engine(run)
    if not valid(values, target):
        assert err is not None and isinstance(err, DOCUMENTED)
        assert str(err).split(":")[0] in (loss, "softmax_cross_entropy", "log_softmax", "getitem"), str(err)
        return
    assert err is None, f"{type(err).__name__}: {err}"
    expected, _ = reference(cross_entropy_reference, values, target)
    if np.isfinite(expected):
        tolerance = 1e-4 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(got.item(), expected, rtol=tolerance, atol=tolerance)
    else:
        assert not np.isfinite(got.item())
    engine(got.backward)
    assert logits.grad.shape == shape and logits.grad.dtype == dtype
    assert np.isfinite(logits.grad).all() or not np.isfinite(values).all()


# -- state dicts and optimizers ---------------------------------------------------------------------
@settings(max_examples=STATE_EXAMPLES, **FUZZ)
@given(drop=st.sets(st.sampled_from(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]), max_size=2),
       extra=st.booleans(), reshape=st.sampled_from([None, "fc1.weight", "fc2.bias"]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_load_state_dict_loads_exactly_or_refuses_and_changes_nothing(drop, extra, reshape, dtype):
    model = nn.TwoLayerNet(3, 4, 2, seed=0)
    before = model.state_dict()
    state = {k: v.astype(dtype) + 1 for k, v in nn.TwoLayerNet(3, 4, 2, seed=1).state_dict().items()
             if k not in drop}
    if extra:
        state["fc3.weight"] = np.zeros(2)
    if reshape in state:
        state[reshape] = state[reshape].reshape(1, -1)
    fits = not drop and not extra and reshape is None and dtype == np.float32
    _, err = engine(model.load_state_dict, state)
    if fits:
        assert err is None
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, state[name])
        return
    assert isinstance(err, nn.StateDictError) and str(err).startswith("TwoLayerNet.load_state_dict:")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


@settings(max_examples=STATE_EXAMPLES, **FUZZ)
@given(optimizer=st.sampled_from([nn.optim.SGD, nn.optim.Adam]),
       lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["0.1", None, True])),
       params=st.sampled_from(["list", "empty", "model", "tensor", "arrays", "twice", "no grad"]))
def test_optimizers_take_valid_settings_or_refuse_with_a_message_naming_them(optimizer, lr, params):
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    given_params = {
        "list": list(model.parameters()), "empty": [], "model": model, "tensor": model.fc1.weight,
        "arrays": [p.data for p in model.parameters()], "twice": [model.fc1.weight] * 2,
        "no grad": [Tensor(np.ones(2))],
    }[params]
    opt, err = engine(optimizer, given_params, lr=lr)
    good_lr = isinstance(lr, float) and lr >= 0
    if params == "list" and good_lr:
        assert err is None and opt.param_groups[0]["lr"] == lr
        return
    assert err is not None and str(err).startswith(optimizer.__name__ + ":"), str(err)
