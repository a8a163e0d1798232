"""The op table: each op's forward and its derivative (one VJP per input), side by side.

Read it like PyTorch's ``derivatives.yaml``. A VJP is ``vjp(g, out, *inputs, **params)``:
``g`` is the gradient of the output, ``out`` the output, ``inputs`` the op's inputs.
They are ndarrays on the first-order path and Tensors under ``create_graph=True``,
so VJPs use only operators and methods both share, and ``op.either(...)`` for other
ops. Broadcast inputs get their gradient summed back by the tape (``unbroadcast``).

>>> import microtensor as mt
>>> x = mt.Tensor([0.0, 2.0], requires_grad=True)
>>> mt.sigmoid(x).sum().backward(); x.grad.round(4)
array([0.25 , 0.105])
"""

from __future__ import annotations

import builtins
import functools
from typing import Any

import numpy as np

from microtensor.autograd import Op
from microtensor.reductions import softmax_shift, sum_first_axis, sum_keepdims


# -- why inputs do not fit: consulted only after a forward failed ---------------------------
def _axis_mismatch(shapes: list[tuple[int, ...]]) -> str | None:
    """The first axis, from the right, where ``shapes`` do not broadcast; None if they do."""
    for axis in range(-1, -builtins.max(map(len, shapes), default=0) - 1, -1):
        sizes = [shape[axis] for shape in shapes if len(shape) >= -axis]
        if len(set(sizes) - {1}) > 1:
            return f"axis {axis} has sizes {' and '.join(map(str, sizes))} (each must be equal or 1)"
    return None


def _broadcast_mismatch(*args: Any) -> str | None:
    shapes = [np.shape(a) for a in args]
    problem = _axis_mismatch(shapes)
    return problem and f"shapes {' and '.join(map(str, shapes))} do not broadcast: {problem}"


def _matmul_mismatch(a: Any, b: Any) -> str | None:
    sa, sb = np.shape(a), np.shape(b)
    if not sa or not sb:
        return f"cannot multiply shapes {sa} and {sb}: both need at least one axis (use * to scale)"
    inner, which = (sb[-2], "second-to-last axis") if len(sb) > 1 else (sb[0], "length")
    if sa[-1] != inner:
        return (f"cannot multiply shapes {sa} and {sb}: the first's last axis ({sa[-1]}) must equal "
                f"the second's {which} ({inner})")
    if _axis_mismatch([sa[:-2], sb[:-2]]):
        return (f"cannot multiply shapes {sa} and {sb}: their batch shapes {sa[:-2]} and {sb[:-2]} "
                f"do not broadcast")
    return None


def _linear_mismatch(x: Any, weight: Any, bias: Any) -> str | None:
    problem = _matmul_mismatch(x, weight)
    if problem:
        return problem
    sx, sw = np.shape(x), np.shape(weight)
    product = np.broadcast_shapes(sx[:-2], sw[:-2]) + sx[-2:-1] + (sw[-1:] if len(sw) > 1 else ())
    problem = _axis_mismatch([product, np.shape(bias)])
    return problem and f"bias of shape {np.shape(bias)} does not fit x @ weight of shape {product}: {problem}"


# -- arithmetic ----------------------------------------------------------------------------
add = Op("add", np.add,
         lambda g, out, a, b: g,
         lambda g, out, a, b: g, explain=_broadcast_mismatch)

sub = Op("sub", np.subtract,
         lambda g, out, a, b: g,
         lambda g, out, a, b: -g, explain=_broadcast_mismatch)

mul = Op("mul", np.multiply,
         lambda g, out, a, b: g * b,
         lambda g, out, a, b: g * a, explain=_broadcast_mismatch)

div = Op("div", np.true_divide,
         lambda g, out, a, b: g / b,
         lambda g, out, a, b: -g * out / b, explain=_broadcast_mismatch)

neg = Op("neg", np.negative,
         lambda g, out, x: -g)


def _log_where_nonzero(a: Any) -> Any:
    # d(a**b)/db = a**b * log(a); at a == 0 the limit is 0, not nan, so log(1) stands in.
    return log.either(a + (a == 0))


def _base_where_exponent_zero(a: Any, b: Any) -> Any:
    # d(a**b)/da = b * a**(b-1) is 0 where b == 0, also at a == 0, where 0 * 0**-1 would be nan:
    # 1 stands in for such an a. The mask is a constant, so higher derivatives stay exact.
    return a + (a == 0) * (b == 0)


pow = Op("pow", np.power,
         lambda g, out, a, b: g * b * _base_where_exponent_zero(a, b) ** (b - 1),
         lambda g, out, a, b: g * out * _log_where_nonzero(a), explain=_broadcast_mismatch)


# -- matmul (NumPy semantics, including 1-D operands and batch broadcasting) ---------------
def _swap_last(x: Any) -> Any:
    return x.T if x.ndim == 2 else x.transpose(tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))


def _append_axis(x: Any) -> Any:
    return x.reshape(x.shape + (1,))


def _drop_last_axis(x: Any) -> Any:
    return x.reshape(x.shape[:-1])


def _matmul_grad_a(g: Any, out: Any, a: Any, b: Any, bias: Any = None) -> Any:  # linear passes its bias
    if b.ndim == 2 and a.ndim > 1:  # a layer's x @ W, checked first: the training hot path
        return g @ b.T
    if b.ndim == 1:
        return g * b if a.ndim == 1 else _append_axis(g) * b
    if a.ndim == 1:
        return _drop_last_axis(b @ _append_axis(g))
    return g @ _swap_last(b)


def _matmul_grad_b(g: Any, out: Any, a: Any, b: Any, bias: Any = None) -> Any:
    if a.ndim == 2 == b.ndim:
        return a.T @ g
    if a.ndim == 1:
        return g * a if b.ndim == 1 else _append_axis(a) * g.reshape(g.shape[:-1] + (1, g.shape[-1]))
    if b.ndim == 1:
        return _drop_last_axis(_swap_last(a) @ _append_axis(g))
    return _swap_last(a) @ g


matmul = Op("matmul", np.matmul, _matmul_grad_a, _matmul_grad_b, explain=_matmul_mismatch)


def _linear(x: np.ndarray, weight: np.ndarray, bias: Any) -> np.ndarray:
    out = x @ weight
    # A layer's bias (a vector of the product's dtype) is added into the fresh product:
    # one array, not two. `is` compares dtypes cheaply; a false negative takes the general path.
    if type(out) is np.ndarray and type(bias) is np.ndarray and bias.dtype is out.dtype \
            and bias.shape == out.shape[-1:]:
        out += bias
        return out
    return out + bias


def _bias_grad(g: Any, out: Any, x: Any, weight: Any, bias: Any) -> Any:
    # Called only when the bias is a Tensor (its array here). A vector bias, the usual layer, is
    # summed over the batch here, on the hot path; other shapes are summed by the tape.
    return sum_first_axis(g) if g.ndim == 2 and bias.ndim == 1 else g


# A layer's x @ W + b as one node: half the bookkeeping of matmul then add.
linear = Op("linear", _linear, _matmul_grad_a, _matmul_grad_b, _bias_grad, explain=_linear_mismatch)


# -- element-wise functions ------------------------------------------------------------------
def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))): no overflow at x = -1000, full precision in both tails.
    return np.exp(-np.logaddexp(0, -x))


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, log(-1) = nan
        return np.log(x)


relu = Op("relu", _relu,
          lambda g, out, x: g * (x > 0))

sigmoid = Op("sigmoid", _sigmoid,
             lambda g, out, x: g * out * (1 - out))

tanh = Op("tanh", np.tanh,
          lambda g, out, x: g * (1 - out * out))

exp = Op("exp", np.exp,
         lambda g, out, x: g * out)

log = Op("log", _log,
         lambda g, out, x: g / x)

astype = Op("astype", lambda x, dtype: x.astype(dtype),
            lambda g, out, x, dtype: g.astype(x.dtype))


# -- softmax family (shifted by the max, so logits of 1e4 stay finite) -----------------------
def _reusable(fresh: Any) -> np.ndarray | None:
    """``fresh`` (a temporary) as the ``out=`` of a float result, unless it cannot hold one."""
    return fresh if type(fresh) is np.ndarray and fresh.dtype.kind == "f" else None


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - softmax_shift(x, axis)
    return np.subtract(shifted, np.log(sum_keepdims(np.exp(shifted), axis)), out=_reusable(shifted))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - softmax_shift(x, axis))
    return np.divide(e, sum_keepdims(e, axis), out=_reusable(e))


log_softmax = Op("log_softmax", _log_softmax,
                 lambda g, out, x, axis=-1: g - exp.either(out) * g.sum(axis=axis, keepdims=True))

softmax = Op("softmax", _softmax,
             lambda g, out, x, axis=-1: out * (g - (g * out).sum(axis=axis, keepdims=True)))


# -- softmax cross-entropy, fused: one node, and a backward of softmax minus the target ------
def _cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, Any]]:
    if logits.ndim != 2 or target.shape not in (logits.shape[:1], logits.shape):
        raise ValueError("logits must have shape (N, C) and target (N,) integer labels or "
                         "(N, C) class probabilities")
    if not len(logits):
        raise ValueError("the batch is empty: a mean loss over no examples is undefined")
    logp = _log_softmax(logits)
    if target.ndim == 1:
        _check_labels(target, logits.shape[1])
        # Where each row's label sits in the flat array: one index for the loss and its gradient.
        # The labels are checked to lie in [0, C), so casting them (from uint64, say) loses nothing.
        labelled = np.add(_row_starts(logp.shape), target, dtype=np.intp, casting="unsafe")
        return -np.add.reduce(logp.reshape(-1)[labelled]) / len(logits), (logp, labelled)
    # 0 * log(0) counts as 0, so a class the target rules out may have a logit of -inf.
    weighted = np.multiply(target, logp, where=target != 0,
                           out=np.zeros(logp.shape, np.result_type(target, logp)))
    return -weighted.sum() / len(logits), (logp, None)


@functools.lru_cache(maxsize=64)
def _row_starts(shape: tuple[int, int]) -> np.ndarray:
    """Where each row of an array of ``shape`` starts in the flattened array."""
    starts = np.arange(0, shape[0] * shape[1], shape[1])
    starts.flags.writeable = False  # shared by every call with this shape
    return starts


_UNSIGNED = {np.dtype(kind).itemsize: np.dtype(kind) for kind in (np.uint8, np.uint16, np.uint32, np.uint64)}


def _check_labels(labels: np.ndarray, classes: int) -> None:
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    # Seen as unsigned, a negative label is huge: one reduction finds both kinds of wrong label.
    if labels.size and np.maximum.reduce(labels.view(_UNSIGNED[labels.itemsize])) >= classes:
        wrong = labels[(labels < 0) | (labels >= classes)]
        raise IndexError(f"labels must be in [0, {classes}) for {classes} classes, got {wrong[0]} "
                         f"({wrong.size} out of range)")


def _cross_entropy_grad(g: Any, out: Any, logits: Any, target: Any, saved: Any = None) -> Any:
    if saved is not None and target.ndim == 1:
        # The training hot path: the same rule, in place on the forward's probabilities.
        logp, labelled = saved
        grad = np.exp(logp)
        grad.reshape(-1)[labelled] -= 1
        grad *= g.item() / len(logits)
        return grad
    if target.ndim == 1:  # labels: the target distribution is their one-hot rows
        labels, target = target, np.zeros(logits.shape, dtype=logits.dtype)
        target[np.arange(len(labels)), labels] = 1
    probabilities = softmax.either(logits) if saved is None else np.exp(saved[0])
    # d(-sum(t * logp))/dlogits is softmax * sum(t) - t: rows need not sum to one.
    return (probabilities * target.sum(axis=-1, keepdims=True) - target) * (g / len(logits))


def _cross_entropy_target_grad(g: Any, out: Any, logits: Any, target: Any, saved: Any = None) -> Any:
    logp = log_softmax.either(logits) if saved is None else saved[0]
    return logp * (-g / len(logits))


softmax_cross_entropy = Op("softmax_cross_entropy", _cross_entropy, _cross_entropy_grad,
                           _cross_entropy_target_grad, saves=True)


# -- reductions ------------------------------------------------------------------------------
def _kept_shape(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    """The shape a reduction over ``axis`` has with keepdims=True."""
    if axis is None or not shape:  # NumPy lets a 0-d array be reduced over axis 0
        return (1,) * len(shape)
    axes = {a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,))}
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _spread(g: Any, x: Any, axis: Any) -> Any:
    """``g`` of a reduction over ``axis``, broadcast back to the shape of ``x``."""
    return expand.either(g.reshape(_kept_shape(x.shape, axis)), shape=x.shape)


def _max_grad(g: Any, out: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    kept = _kept_shape(x.shape, axis)
    is_max = x == out.reshape(kept)
    # Ties share the gradient equally, so the rule is symmetric in the tied entries.
    return g.reshape(kept) * is_max / is_max.sum(axis=axis, keepdims=True)


def _mean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    if x.size:
        return np.mean(x, axis=axis, keepdims=keepdims)
    with np.errstate(invalid="ignore"):  # the mean of nothing is nan, as in PyTorch, without a warning
        return np.true_divide(np.sum(x, axis=axis, keepdims=keepdims), 0)


sum = Op("sum", lambda x, axis=None, keepdims=False: np.sum(x, axis=axis, keepdims=keepdims),
         lambda g, out, x, axis=None, keepdims=False: _spread(g, x, axis))

mean = Op("mean", _mean,
          lambda g, out, x, axis=None, keepdims=False: _spread(g, x, axis) * (out.size / (x.size or 1)))

max = Op("max", lambda x, axis=None, keepdims=False: np.max(x, axis=axis, keepdims=keepdims),
         _max_grad)


# -- shape ---------------------------------------------------------------------------------
def _inverse_permutation(axes: Any, ndim: int) -> Any:
    return None if axes is None else tuple(np.argsort([a % ndim for a in axes]))


reshape = Op("reshape", lambda x, shape: np.reshape(x, shape),
             lambda g, out, x, shape: g.reshape(x.shape))

transpose = Op("transpose", lambda x, axes=None: np.transpose(x, axes),
               lambda g, out, x, axes=None: g.transpose(_inverse_permutation(axes, x.ndim)))

expand = Op("expand", lambda x, shape: np.broadcast_to(x, shape),
            lambda g, out, x, shape: g)  # the tape sums g back to x's shape


def _is_basic_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def _scatter_add(g: np.ndarray, shape: tuple[int, ...], index: Any) -> np.ndarray:
    """Zeros of ``shape`` with ``g`` added at ``index`` (repeated indices add up)."""
    out = np.zeros(shape, dtype=g.dtype)
    if _is_basic_index(index):
        out[index] = g
    else:
        np.add.at(out, index, g)
    return out


getitem = Op("getitem", lambda x, index: x[index],
             lambda g, out, x, index: scatter_add.either(g, shape=x.shape, index=index))

scatter_add = Op("scatter_add", _scatter_add,
                 lambda g, out, src, shape, index: getitem.either(g, index=index))


# -- comparisons (never differentiable, never recorded) ------------------------------------
greater = Op("greater", np.greater, explain=_broadcast_mismatch)
less = Op("less", np.less, explain=_broadcast_mismatch)
greater_equal = Op("greater_equal", np.greater_equal, explain=_broadcast_mismatch)
less_equal = Op("less_equal", np.less_equal, explain=_broadcast_mismatch)
equal = Op("equal", np.equal, explain=_broadcast_mismatch)
not_equal = Op("not_equal", np.not_equal, explain=_broadcast_mismatch)
