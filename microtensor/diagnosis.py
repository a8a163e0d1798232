"""Why a gradient is wrong: a table of hypotheses, each a small test that explains a mismatch or not.

A hypothesis reads the :class:`Evidence` (the expected and the actual gradient, the tolerances,
and what the tape knows about the tensor) and returns one sentence a learner can act on when
its prediction reproduces the actual gradient to tolerance, and None otherwise. A hypothesis
never matches on resemblance alone: it builds the gradient the mistake would give and asks
:meth:`Evidence.fits`. :func:`diagnose` tries the table in order, most specific first, and
falls back to saying how large the error is and where. Adding a mistake is adding one function
to ``HYPOTHESES``.

>>> diagnose(Evidence(np.array([1.0, -2.0, 3.0]), np.array([-1.0, 2.0, -3.0])))
'has the sign flipped: it is -1 times the expected gradient (e.g. y - probs instead of probs - y)'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Step:
    """One recorded op next to a tensor, as the tape saw it in the forward pass.

    For the op that *used* the tensor (a use), ``index`` says which input the tensor was,
    ``grad_output`` is the tape's gradient of the op's output, and ``rest`` the tape's gradient
    of the tensor minus what flows back through this op: the share of every other path.
    """

    op: str
    inputs: tuple[Any, ...]
    labels: tuple[str, ...]
    output: np.ndarray
    params: Mapping[str, Any] = field(default_factory=dict)
    index: int = -1
    grad_output: np.ndarray | None = None
    rest: np.ndarray | None = None


@dataclass(frozen=True)
class Carried:
    """A classic mistake at a later step of the graph, as it reaches a checked tensor's gradient.

    ``mistake`` says what went wrong there, ``error`` is what it adds to this tensor's right
    gradient. ``everywhere``: every checked tensor before that step is off by its share too (the
    mistake was made at the step). ``nearest``: this tensor is an intermediate with no checked
    tensor between it and the step, so its own formula goes through the step.
    """

    mistake: str
    error: np.ndarray
    everywhere: bool
    nearest: bool = False


@dataclass(frozen=True)
class Context:
    """What is known about the tensor besides its gradients (all optional).

    ``value`` is its forward value; ``is_parameter`` marks a weight or bias, for the L2
    hypotheses; ``producer`` and ``uses`` are the ops around it on the tape; ``batch_size``
    names the factor N; ``tensors`` are other forward values by label, for a ReLU mask taken
    from the wrong tensor. ``downstream`` lists the mistakes at later steps that reach this
    tensor's gradient (see :class:`Carried`).
    """

    label: str = "this tensor"
    value: np.ndarray | None = None
    is_parameter: bool = False
    producer: Step | None = None
    uses: tuple[Step, ...] = ()
    batch_size: int | None = None
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    downstream: tuple[Carried, ...] = ()


class Evidence:
    """An expected and an actual gradient, the tolerances that judge them, and the context."""

    def __init__(self, expected: Any, actual: Any, atol: float = 1e-8, rtol: float = 1e-5,
                 context: Context | None = None) -> None:
        self.expected = np.asarray(expected, dtype=np.float64)
        self.actual = np.asarray(actual, dtype=np.float64)
        self.atol = atol
        self.rtol = rtol
        self.context = context or Context()

    def fits(self, predicted: Any, where: np.ndarray | None = None) -> bool:
        """Whether ``predicted`` reproduces the actual gradient to tolerance, element by element
        (only at the entries ``where`` is True, when given)."""
        return self.close(self.actual, predicted, where)

    def close(self, actual: Any, predicted: Any, where: np.ndarray | None = None) -> bool:
        """Whether ``actual`` is ``predicted`` to this evidence's tolerances."""
        actual, predicted = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        if predicted.shape != actual.shape:
            return False
        ok = np.abs(actual - predicted) <= self.atol + self.rtol * np.abs(predicted)
        return bool(np.all(ok if where is None else ok[where]))

    @property
    def same_shape(self) -> bool:
        return self.expected.shape == self.actual.shape

    def uses(self, *ops: str) -> Iterator[Step]:
        """The recorded uses of the tensor by one of ``ops`` (all ops when none are given)."""
        for use in self.context.uses:
            if (not ops or use.op in ops) and use.rest is not None and self.same_shape:
                yield use


Hypothesis = Callable[[Evidence], "str | None"]


# -- numbers in sentences ----------------------------------------------------------------
def _is_close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _least_squares(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray | None:
    """Coefficients of the columns that best reproduce ``target``, or None when they cannot
    be told apart (too few elements to fit that many coefficients honestly, or collinear)."""
    matrix = np.stack([c.ravel() for c in columns], axis=1)
    if matrix.shape[0] < 2 * matrix.shape[1] or np.linalg.matrix_rank(matrix) < matrix.shape[1]:
        return None
    return np.linalg.lstsq(matrix, target.ravel(), rcond=None)[0]


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _factor_meaning(c: float, batch_size: int | None, of: str = "the expected gradient") -> str:
    """What a factor ``c`` between the actual and the expected value ``of`` most likely means."""
    named = {2.0: f"twice {of}: a factor 2 too many (a term added twice, or d/dx of 0.5 * x**2 "
                  "taken as 2 * x instead of x)",
             0.5: f"half {of}: a factor 2 is missing (d/dx of x**2 is 2 * x)"}
    if batch_size and batch_size > 1:
        named[float(batch_size)] = (f"N = {batch_size} times {of}, N the batch size: "
                                    f"the 1/N of the mean over the batch is missing; divide by N")
        named[1.0 / batch_size] = (f"1/N of {of} (N = {batch_size}, the batch size): "
                                   f"divided by N once too often")
    for value, meaning in named.items():
        if _is_close(abs(c), value):
            return meaning
    if abs(c) > 1 and _is_close(abs(c), round(abs(c))):
        return (f"{round(abs(c))} times {of}: a missing division by {round(abs(c))} "
                f"(a 1/N of a mean over {round(abs(c))} elements?)")
    if abs(c) < 1 and _is_close(1 / abs(c), round(1 / abs(c))):
        n = round(1 / abs(c))
        return f"1/{n} of {of}: divided by {n} once too often"
    hint = ""
    if 1 < abs(c) < 1.5:
        hint = (f"; if {abs(c):.4g} is 1 + reg, regularisation was applied to the gradient "
                f"(dW + reg * dW) instead of the weight (dW + reg * W)")
    return f"{abs(c):.4g} times {of}: a constant factor in the formula is wrong{hint}"


# -- hypotheses on values alone -------------------------------------------------------------
def _non_finite(values: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """How many entries are NaN or inf, and where the first one is; None when all are finite."""
    bad = ~np.isfinite(values)
    return (int(bad.sum()), _index(int(np.argmax(bad)), bad.shape)) if bad.any() else None


def not_finite(ev: Evidence) -> str | None:
    found = _non_finite(ev.actual)
    return found and (f"is not finite: {found[0]} NaN/inf value(s), first at {found[1]}; an overflow or "
                      f"a log/division by zero in the formula (compute softmax from logits minus their row "
                      f"max)")


def expected_not_finite(ev: Evidence) -> str | None:
    found = _non_finite(ev.expected)
    return found and (f"cannot be judged: the expected gradient is not finite at {found[1]}; the forward "
                      f"pass overflows or takes log(0) (run it under mt.detect_anomaly() to find the op)")


def _keepdims(shape: tuple[int, ...]) -> str:
    """How a sum over the batch gets a bias of ``shape``: (C,) drops the axis, (1, C) keeps it."""
    return "g.sum(axis=0, keepdims=True)" if len(shape) == 2 and shape[0] == 1 else "g.sum(axis=0)"


def not_summed_over_batch(ev: Evidence) -> str | None:
    # A bias of shape (C,), or (1, C) as in the notebooks, given one gradient per example, (N, C).
    bias = ev.expected.shape[1:] if ev.expected.ndim == 2 and ev.expected.shape[0] == 1 else ev.expected.shape
    if ev.actual.ndim != len(bias) + 1 or ev.actual.shape[1:] != bias or ev.actual.shape[0] < 2:
        return None
    if not ev.close(ev.actual.sum(axis=0).reshape(ev.expected.shape), ev.expected):
        return None
    return (f"has shape {ev.actual.shape} but the tensor has shape {ev.expected.shape}: one gradient "
            f"per example, not summed over the batch; a bias gradient is {_keepdims(ev.expected.shape)}")


def kept_an_axis(ev: Evidence) -> str | None:
    if ev.same_shape or ev.actual.size != ev.expected.size:
        return None
    if not ev.fits(ev.expected.reshape(ev.actual.shape)):
        return None
    right = f"has shape {ev.actual.shape} but the tensor has shape {ev.expected.shape}; the values are right"
    squeezed = tuple(n for n in ev.actual.shape if n != 1) == tuple(n for n in ev.expected.shape if n != 1)
    if not squeezed:
        return f"{right}, in the wrong shape: reshape it to {ev.expected.shape}"
    if ev.actual.ndim > ev.expected.ndim:
        return f"{right}: drop keepdims=True or reshape it to {ev.expected.shape}"
    return f"{right}: keep the summed axis (keepdims=True) or reshape it to {ev.expected.shape}"


def transposed(ev: Evidence) -> str | None:
    if ev.expected.ndim != 2 or not ev.fits(ev.expected.T):
        return None
    return ("is transposed: it holds the expected values at swapped indices (e.g. g.T @ x instead "
            "of x.T @ g; the gradient of W in x @ W is x.T @ g, with W's shape)")


def all_zeros(ev: Evidence) -> str | None:
    if not ev.same_shape or np.any(ev.actual) or not np.any(ev.expected):
        return None
    return ("is all zeros where a gradient is expected: it was never computed or assigned "
            "(a np.zeros_like left as is, or the result of a step not stored?)")


def expected_zero(ev: Evidence) -> str | None:
    # Zero to tolerance, and no mere multiple of a gradient that is small but there (10 * 5e-9).
    largest = np.abs(ev.expected).max(initial=0.0)
    if not ev.same_shape or largest > ev.atol or largest > 1e-6 * np.abs(ev.actual).max(initial=0.0):
        return None
    return ("should be zero everywhere (the output does not depend on this tensor here, e.g. every "
            "ReLU after it is off) but it is not")


def sign_flipped(ev: Evidence) -> str | None:
    if not ev.fits(-ev.expected):
        return None
    return "has the sign flipped: it is -1 times the expected gradient (e.g. y - probs instead of probs - y)"


def constant_factor(ev: Evidence) -> str | None:
    if not ev.same_shape:
        return None
    fit = _least_squares([ev.expected], ev.actual)
    if fit is None or _is_close(fit[0], 1.0) or not ev.fits(fit[0] * ev.expected):
        return None
    meaning = _factor_meaning(float(fit[0]), ev.context.batch_size)
    return f"has the sign flipped and is {meaning}" if fit[0] < 0 else f"is {meaning}"


# -- hypotheses on a parameter's value: L2 ------------------------------------------------
def _weight(ev: Evidence) -> np.ndarray | None:
    value = ev.context.value
    if not ev.context.is_parameter or value is None or value.shape != ev.expected.shape or not ev.same_shape:
        return None
    return np.asarray(value, dtype=np.float64)


def _loss_l2(ev: Evidence, weight: np.ndarray) -> float | None:
    """The loss's own L2 coefficient on this weight, read off the tape (check_manual): what every
    path but the layer's product sends back is ``reg * W``. None when the tape is not known."""
    for use in ev.uses("matmul", "linear", "add"):
        # A layer's use: the weight of x @ W (or linear's), or a bias added to the product.
        if use.op == "add" or use.index > 0:
            fit = _least_squares([weight], use.rest)
            if fit is not None and ev.close(use.rest, fit[0] * weight):
                return float(fit[0])
    return None


def _near(a: float, b: float, scale: float) -> bool:
    # Coefficients fitted from float32 gradients agree to a few parts in a million, not to 1e-6.
    return abs(a - b) <= 1e-3 * abs(scale)


def l2_term(ev: Evidence) -> str | None:
    weight = _weight(ev)
    if weight is None:
        return None
    fit = _least_squares([weight], ev.actual - ev.expected)
    if fit is None or not ev.fits(ev.expected + fit[0] * weight):
        return None
    name, beta = ev.context.label, float(fit[0])
    reg = _loss_l2(ev, weight)
    if reg and beta < 0 and not _near(beta, -reg, reg):  # an L2 term there, of the wrong sign or size
        if _near(beta, -2 * reg, reg):
            return (f"subtracts the L2 term instead of adding it: it has -{reg:.3g} * {name} where the "
                    f"loss gives +{reg:.3g} * {name}")
        return (f"has the L2 term {reg + beta:.3g} * {name} where the loss gives {reg:.3g} * {name}: "
                f"the gradient of 0.5 * reg * sum({name}**2) is reg * {name}")
    if beta < 0:
        return (f"misses the L2 term {-beta:.3g} * {name}: add reg * {name}, the gradient of "
                f"0.5 * reg * sum({name}**2)")
    extra = f"has an extra L2 term {beta:.3g} * {name}"
    if reg == 0:
        return f"{extra}: the loss has no L2 term on {name} (biases are usually not regularised)"
    if reg is not None:
        twice = "the L2 term counted twice, " if _near(beta, reg, reg) else ""
        return (f"{extra}: {twice}{reg + beta:.3g} * {name} in all where the loss gives {reg:.3g} * "
                f"{name} (0.5 * reg * sum({name}**2) gives reg * {name})")
    return (f"{extra}: either the loss has no L2 on {name} (biases are usually not regularised) or it "
            f"is counted twice (0.5 * reg * sum({name}**2) gives reg * {name})")


def _scaled_with_weight(ev: Evidence) -> tuple[np.ndarray, float, float] | None:
    """The weight, and the ``scale`` and ``extra`` of ``actual ~ scale * expected + extra * W``;
    None when the tensor is no parameter or the two cannot be told apart."""
    weight = _weight(ev)
    fit = None if weight is None else _least_squares([ev.expected, weight], ev.actual)
    return None if fit is None else (weight, float(fit[0]), float(fit[1]))


def regularised_gradient(ev: Evidence) -> str | None:
    # The mistake dW = (1 + reg) * dW_data, where the loss wants dW = dW_data + reg * W.
    fit = _scaled_with_weight(ev)
    if fit is None:
        return None
    weight, scale, _ = fit
    reg = scale - 1
    if _is_close(scale, 1.0) or not ev.fits(scale * (ev.expected - reg * weight)):
        return None
    return (f"looks like dW + {reg:.3g} * dW: regularisation applied to the gradient instead of the "
            f"weight; the L2 gradient is reg * {ev.context.label}")


def data_term_factor(ev: Evidence) -> str | None:
    # dW = c * dW_data + b * W: the loss's part off by a factor (a 1/N left out, say), beside an
    # L2 part. With the tape (check_manual) the loss's own reg is known, and b is judged against
    # it; without, two numbers fitted cannot tell b from reg, and b is taken to be the loss's reg.
    fit = _scaled_with_weight(ev)
    if fit is None:
        return None
    weight, scale, extra = fit
    if _is_close(scale, 1.0) or not ev.fits(scale * ev.expected + extra * weight):
        return None
    name, reg = ev.context.label, _loss_l2(ev, weight)
    kept = None if reg is None else extra + scale * reg  # actual = scale * (expected - reg * W) + kept * W
    if reg is None:
        reg = extra / (1 - scale)
        if not reg > 0:
            return None
    elif _near(kept, reg, reg or kept):
        kept = None  # the L2 part is right
    l2 = f"the L2 term {reg:.3g} * {name}"
    if kept is None and abs(scale) < 1e-6:
        return f"holds only {l2}: its data term (the gradient of the loss itself) is missing"
    if kept is None:
        l2 = f"has {l2}, but"
    elif _near(kept, 0.0, reg or kept):
        l2 = f"misses {l2} (add reg * {name}), and"
    else:
        l2 = f"has the L2 term {kept:.3g} * {name} where the loss gives {reg:.3g} * {name}, and"
    if abs(scale) < 1e-6:
        return f"{l2} its data term (the gradient of the loss itself) is missing"
    if _is_close(scale, -1.0):
        return f"{l2} the sign of its data term (the rest) is flipped"
    meaning = _factor_meaning(scale, ev.context.batch_size, of="the expected data term")
    flipped = "has the sign flipped and " if scale < 0 else ""
    return f"{l2} its data term (the rest) {flipped}is {meaning}"


# -- hypotheses on the op that used the tensor ----------------------------------------------
def _relu_masks(use: Step, tensors: Mapping[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    z, g = use.inputs[0], use.grad_output
    label = use.labels[0]
    yield f"uses the inverted ReLU mask ({label} <= 0); the derivative of relu is ({label} > 0)", z <= 0
    yield (f"is masked by the sign of the incoming gradient (g > 0); the ReLU mask comes from the "
           f"forward value ({label} > 0)"), g > 0
    masks: dict[bytes, tuple[list[str], np.ndarray]] = {}  # tensors that give the same mask, together
    for other, value in tensors.items():
        if value.shape == z.shape and not np.array_equal(value > 0, z > 0):
            masks.setdefault(np.packbits(value > 0).tobytes(), ([], value > 0))[0].append(f"({other} > 0)")
    for labels, mask in masks.values():
        yield (f"is masked with {' or '.join(labels)}, a mask from the wrong tensor: the ReLU derivative "
               f"is ({label} > 0), from this ReLU's own input"), mask


def wrong_relu_mask(ev: Evidence) -> str | None:
    for use in ev.uses("relu"):
        for sentence, mask in _relu_masks(use, ev.context.tensors):
            if not mask.all() and ev.fits(use.rest + use.grad_output * mask):
                return sentence
    return None


_MISSING_DERIVATIVE = {
    "relu": "passes the gradient through the ReLU unmasked: multiply it by ({x} > 0)",
    "sigmoid": "passes the gradient through the sigmoid without its derivative: multiply it by "
               "s * (1 - s), with s = sigmoid({x}) the sigmoid's output",
    "tanh": "passes the gradient through tanh without its derivative: multiply it by 1 - t**2, "
            "with t = tanh({x}) the output",
    "log_softmax": "misses the softmax * sum(g) term of the log-softmax gradient: it is "
                   "g - softmax({x}) * g.sum(axis); for cross-entropy that is (probs - y) / N",
    "softmax": "passes the gradient through the softmax without its derivative: it is "
               "s * (g - (g * s).sum(axis, keepdims=True)), with s the softmax's output",
}


def missing_derivative(ev: Evidence) -> str | None:
    for use in ev.uses(*_MISSING_DERIVATIVE):
        if ev.fits(use.rest + use.grad_output):
            return _MISSING_DERIVATIVE[use.op].format(x=use.labels[0])
    return None


def correct_only_where_relu_active(ev: Evidence) -> str | None:
    for use in ev.uses("relu"):
        active = use.inputs[0] > 0
        if active.all() or not active.any():
            continue
        if ev.fits(ev.expected, where=active):
            label = use.labels[0]
            return (f"is right where the ReLU is active ({label} > 0) but not where it is off: there "
                    f"the gradient must be 0; multiply by ({label} > 0)")
    return None


def masked_too_early(ev: Evidence) -> str | None:
    step = ev.context.producer
    if step is None or step.op != "relu" or not ev.same_shape:
        return None
    z_label = step.labels[0]
    if not ev.fits(ev.expected * (step.inputs[0] > 0)):
        return None
    return (f"is already masked by the ReLU that made it: the mask ({z_label} > 0) belongs to the "
            f"gradient of the ReLU's input {z_label}, not to its output {ev.context.label}")


# (the op, what the formula used instead of the output, the derivative from that, the sentence)
_DERIVATIVE_FROM_WRONG_TENSOR = [
    ("sigmoid", lambda z, s: z * (1 - z),
     "uses the sigmoid derivative on the pre-activation: z * (1 - z) with z = {x}; it is s * (1 - s) "
     "with s = sigmoid(z), the output"),
    ("sigmoid", lambda z, s: (1 / (1 + np.exp(-s))) * (1 - 1 / (1 + np.exp(-s))),
     "applies sigmoid to its output again: sigmoid(s) * (1 - sigmoid(s)); s is already the output, "
     "so the derivative is s * (1 - s)"),
    ("tanh", lambda z, s: 1 - z * z,
     "uses the tanh derivative on the pre-activation: 1 - z**2 with z = {x}; it is 1 - t**2 with "
     "t = tanh(z), the output"),
    ("softmax", lambda z, s: s * (1 - s),
     "uses only the diagonal of the softmax Jacobian, s * (1 - s) as for a sigmoid; each softmax "
     "output depends on every input of its row: the gradient is s * (g - (g * s).sum(axis, keepdims=True))"),
]


def derivative_from_wrong_tensor(ev: Evidence) -> str | None:
    for op, derivative, sentence in _DERIVATIVE_FROM_WRONG_TENSOR:
        for use in ev.uses(op):
            if ev.fits(use.rest + use.grad_output * derivative(use.inputs[0], use.output)):
                return sentence.format(x=use.labels[0])
    return None


def weight_gradient_from_wrong_input(ev: Evidence) -> str | None:
    # dW = x.T @ g needs the layer's input x; the pre-activation z taken for the activation h is classic.
    for use in ev.uses("matmul", "linear"):
        x, g = use.inputs[0], use.grad_output
        if use.index != 1 or np.ndim(x) != 2 or np.ndim(use.inputs[1]) != 2:
            continue
        if use.labels[0] not in ev.context.tensors:  # the input is data, not a step of the net
            continue
        for label, value in ev.context.tensors.items():
            if value.shape == x.shape and not np.array_equal(value, x) and ev.fits(use.rest + value.T @ g):
                x_label, w_label = use.labels[:2]
                return (f"uses {label} where the layer's input {x_label} belongs: the gradient of "
                        f"{x_label} @ {w_label} with respect to {w_label} is {x_label}.T @ g")
    return None


def log_softmax_mistakes(use: Step) -> list[tuple[str, np.ndarray]]:
    """The two classic mistakes in the gradient of a log-softmax at its input, each with what it
    adds to the right gradient ``g - softmax(x) * g.sum(axis)``."""
    g = use.grad_output
    softmax_term = np.exp(use.output) * g.sum(axis=use.params.get("axis", -1), keepdims=True)
    return [(_MISSING_DERIVATIVE["log_softmax"].format(x=use.labels[0]), softmax_term),
            ("misses the g term of the log-softmax gradient g - softmax(x) * g.sum(axis); for "
             "cross-entropy: the - y of (probs - y) / N", -g)]


def log_softmax_without_g(ev: Evidence) -> str | None:
    for use in ev.uses("log_softmax"):
        mistake, error = log_softmax_mistakes(use)[1]
        if ev.fits(ev.expected + error):
            return mistake
    return None


def matmul_without_transpose(ev: Evidence) -> str | None:
    for use in ev.uses("matmul", "linear"):
        a, b = use.inputs[:2]
        if use.index != 0 or np.ndim(a) != 2 or np.ndim(b) != 2 or b.shape[0] != b.shape[1]:
            continue
        if ev.fits(use.rest + use.grad_output @ b):
            w = use.labels[1]
            return (f"multiplies by {w} instead of {w}.T: the gradient of x @ {w} with respect to x "
                    f"is g @ {w}.T")
    return None


def cross_entropy_mistakes(logits: np.ndarray, target: np.ndarray, g: Any) -> list[tuple[str, np.ndarray]]:
    """The two classic mistakes in the gradient of a mean cross-entropy at its logits, each with
    what it adds to the right gradient ``(probs - y) * g / N``."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    y = np.eye(logits.shape[1])[target] if target.ndim == 1 else target
    scale = g / len(logits)
    return [("misses the softmax * sum(g) term: the gradient of the mean cross-entropy with respect "
             "to the logits is (probs - y) / N, not -y / N", -probs * scale),
            ("misses the - y of (probs - y) / N: the labels were never subtracted from probs", y * scale)]


# The steps whose classic mistakes check_manual carries back to the tensors before them.
MISTAKEN_OPS = frozenset({"softmax_cross_entropy", "mean", *_MISSING_DERIVATIVE})


def _mean_mistakes(right: np.ndarray, n: int, batch_size: int | None) -> list[tuple[str, np.ndarray]]:
    """The 1/n of a mean over n entries left out, or applied twice, each with what it adds to
    the right gradient ``right``."""
    if n < 2:
        return []
    return [(f"is {_factor_meaning(n, batch_size)}", (n - 1) * right),
            (f"is {_factor_meaning(1 / n, batch_size)}", (1 / n - 1) * right)]


def step_mistakes(step: Step, right: np.ndarray, tensors: Mapping[str, np.ndarray],
                  batch_size: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The classic mistakes in the gradient ``step`` (an op of ``MISTAKEN_OPS`` with its
    ``grad_output``) sends to its first input, where ``right`` is the right one: each with
    what it adds to ``right``. ``batch_size`` names the N of a mean over the batch."""
    if step.op == "softmax_cross_entropy":
        logits = step.inputs[0]
        return [*cross_entropy_mistakes(*step.inputs, step.grad_output),
                *_mean_mistakes(right, len(logits), len(logits))]
    if step.op == "mean":
        return _mean_mistakes(right, np.size(step.inputs[0]) // max(np.size(step.output), 1), batch_size)
    if step.op == "log_softmax":
        return log_softmax_mistakes(step)
    g, x = step.grad_output, step.labels[0]
    wrong = [(_MISSING_DERIVATIVE[step.op].format(x=x), g)]
    wrong += [(sentence.format(x=x), g * derivative(step.inputs[0], step.output))
              for op, derivative, sentence in _DERIVATIVE_FROM_WRONG_TENSOR if op == step.op]
    if step.op == "relu":
        wrong += [(sentence, g * mask) for sentence, mask in _relu_masks(step, tensors)]
    return [(sentence, gradient - right) for sentence, gradient in wrong]


def cross_entropy_missing_term(ev: Evidence) -> str | None:
    for use in ev.uses("softmax_cross_entropy"):
        if use.index != 0:
            continue
        for mistake, error in cross_entropy_mistakes(*use.inputs, use.grad_output):
            if ev.fits(ev.expected + error):
                return mistake
    return None


def _carried(ev: Evidence, everywhere: bool, nearest: bool) -> str | None:
    for carried in ev.context.downstream:
        if (carried.everywhere, carried.nearest) == (everywhere, nearest) and ev.same_shape \
                and ev.fits(ev.expected + carried.error):
            return carried.mistake
    return None


def carried_from_downstream(ev: Evidence) -> str | None:
    # A checked tensor lies between: that one's row names the mistake, this one only inherits it.
    mistake = _carried(ev, everywhere=True, nearest=False)
    return mistake and (f"is wrong only by what a mistake further down carries back: {mistake}; fix "
                        f"that, and this gradient follows")


def mistake_in_its_own_steps(ev: Evidence) -> str | None:
    # Nothing checked lies between: the mistake sits in a step this tensor's own formula goes through.
    mistake = _carried(ev, everywhere=True, nearest=True)
    return mistake and f"is wrong at a step its formula goes through: {mistake}"


def computed_from_a_wrong_gradient(ev: Evidence) -> str | None:
    # The same error, but not in every gradient checked at or before that step: this formula took
    # a wrong gradient of its own (dW1 = X.T @ dh for X.T @ dz1, say).
    mistake = _carried(ev, everywhere=False, nearest=False) or _carried(ev, everywhere=False, nearest=True)
    return mistake and (f"is computed from a wrong gradient, as if {mistake}; other gradients checked "
                        f"at or before that step do not have this error, so it is in this one's formula")


def summed_over_wrong_axis(ev: Evidence) -> str | None:
    for use in ev.context.uses:
        g = use.grad_output
        if g is None or g.ndim != 2 or ev.expected.size != g.shape[1]:
            continue
        if ev.actual.shape in ((g.shape[0],), (g.shape[0], 1)) and ev.fits(g.sum(axis=1, keepdims=True)
                                                                         .reshape(ev.actual.shape)):
            return (f"has one entry per example, shape {ev.actual.shape}: summed over axis 1 "
                    f"instead of the batch axis 0 ({_keepdims(ev.expected.shape)})")
    return None


def zeros_where_gradient_expected(ev: Evidence) -> str | None:
    if not ev.same_shape:
        return None
    zeroed = (ev.actual == 0) & (ev.expected != 0)
    if not zeroed.any() or not ev.fits(np.where(zeroed, 0.0, ev.expected)):
        return None
    where = _index(int(np.argmax(zeroed)), zeroed.shape)
    return (f"is zero at {int(zeroed.sum())} of {zeroed.size} entries where a gradient is expected "
            f"(e.g. at {where}) and right elsewhere: a mask or an index drops those entries")


def wrong_shape(ev: Evidence) -> str | None:
    if ev.same_shape:
        return None
    return (f"has shape {ev.actual.shape} but the tensor has shape {ev.expected.shape}: a gradient "
            f"always has the shape of its tensor")


# Most specific first: a mistake that also looks like a general one must be named as itself.
HYPOTHESES: list[Hypothesis] = [
    not_finite, expected_not_finite,
    kept_an_axis, not_summed_over_batch, summed_over_wrong_axis, transposed, wrong_shape,
    all_zeros, expected_zero, sign_flipped,
    wrong_relu_mask, missing_derivative, derivative_from_wrong_tensor, weight_gradient_from_wrong_input,
    log_softmax_without_g,
    cross_entropy_missing_term, carried_from_downstream, matmul_without_transpose, masked_too_early,
    constant_factor, l2_term, regularised_gradient, computed_from_a_wrong_gradient, data_term_factor,
    mistake_in_its_own_steps, correct_only_where_relu_active, zeros_where_gradient_expected,
]


def _where_largest(ev: Evidence) -> str:
    error = np.abs(ev.actual - ev.expected)
    bad = ~(error <= ev.atol + ev.rtol * np.abs(ev.expected))
    worst = _index(int(np.argmax(np.where(bad, error, -1.0))), error.shape)  # the worst of the wrong ones
    share = f"{bad.mean():.0%}" if bad.mean() >= 0.01 else f"{100 * bad.mean():.2g}%"
    at = f"{worst}: expected {ev.expected[worst]:.4g}, got {ev.actual[worst]:.4g}"
    if error[worst] >= np.nanmax(error):
        sentence = (f"is off by up to {error[worst]:.3g} (largest at {at}); {share} of its entries are out "
                    f"of tolerance")
    else:  # a larger error sits at a larger entry, within rtol of it
        sentence = (f"is out of tolerance at {share} of its entries, by up to {error[worst]:.3g} (at {at}); "
                    f"larger errors elsewhere are within rtol of larger entries")
    if ev.expected.ndim == 2:
        for axis, word in ((1, "row"), (0, "column")):
            lines = np.flatnonzero(bad.any(axis=axis))
            if 0 < len(lines) <= 3 and bad.shape[1 - axis] > len(lines):
                sentence += f", all in {word}(s) {', '.join(map(str, lines))}"
                break
    return sentence


def diagnose(evidence: Evidence) -> str:
    """One sentence on why the actual gradient differs from the expected one.

    >>> diagnose(Evidence(np.arange(1.0, 7.0).reshape(2, 3), np.arange(1.0, 7.0).reshape(2, 3).T))
    "is transposed: it holds the expected values at swapped indices (e.g. g.T @ x instead of x.T @ g; \
the gradient of W in x @ W is x.T @ g, with W's shape)"
    """
    for hypothesis in HYPOTHESES:
        sentence = hypothesis(evidence)
        if sentence is not None:
            return sentence
    return _where_largest(evidence)
