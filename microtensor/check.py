"""Checking gradients: finite differences, gradcheck, and hand-written backprop against the tape.

``numerical_grad`` and ``gradcheck`` test the engine (or an op you wrote) against central
differences. ``compare_grads`` and ``check_manual`` test *your* backprop against the tape:
every named tensor gets a row with its errors and, when it is wrong, a diagnosis (see
``microtensor/diagnosis.py``); ``check_manual`` also says which hand-derived step is wrong
first. Everything returns a :class:`GradReport`, truthy only when everything matches.

>>> import microtensor as mt
>>> w = mt.Tensor([1.0, -2.0], requires_grad=True, name="w")
>>> loss = (w * w).sum()
>>> mt.check_manual(loss, {"w": 2 * w.data}).ok
True
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from microtensor.autograd import expect_tensor, grad, no_grad, recorded_nodes, tape, unbroadcast
from microtensor.diagnosis import MISTAKEN_OPS, Carried, Context, Evidence, Step, diagnose, step_mistakes
from microtensor.tensor import Tensor


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GradRow:
    """One compared gradient.

    ``max_rel_err`` is the largest absolute error divided by the largest expected entry (so it
    does not blow up on entries near zero); ``worst_index`` is where the absolute error is
    largest; ``frac_bad`` the fraction of entries outside ``|actual - expected| <= atol + rtol *
    |expected|``; ``verdict`` is ``"ok"``, ``"WRONG"`` (the first wrong step) or ``"mismatch"``.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    frac_bad: float
    ok: bool
    verdict: str
    diagnosis: str


@dataclass(frozen=True)
class ContractCheck:
    """One rule every backward must obey (gradcheck), whether it held, and how it failed."""

    name: str
    ok: bool
    detail: str = ""


class RowReport:
    """Named rows, each with an ``ok``: truthy only when every row is; ``report[name]`` is a row.

    The base of :class:`GradReport` and of ``nn.manual.ManualReport``.

    >>> report = compare_grads({"b": np.ones(3)}, {"b": np.ones(3)})
    >>> bool(report), report["b"].ok
    (True, True)
    """

    rows: list[Any]
    row_kind = "row"  # what a row stands for, in the error for a name that is not there

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def __getitem__(self, name: str) -> Any:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"{type(self).__name__}: no {self.row_kind} named {name!r}; "
                       f"{self.row_kind}s: {[row.name for row in self.rows]}")


class GradReport(RowReport):
    """Gradients compared row by row; truthy only when every row (and contract check) is ok.

    >>> report = compare_grads({"b": np.ones(3)}, {"b": -np.ones(3)})
    >>> bool(report), report.first_wrong, report["b"].verdict
    (False, 'b', 'WRONG')
    """

    def __init__(self, rows: Sequence[GradRow], first_wrong: str | None = None,
                 checks: Sequence[ContractCheck] = (), title: str = "gradients",
                 atol: float = 0.0, rtol: float = 0.0) -> None:
        self.rows = list(rows)
        self.first_wrong = first_wrong
        self.checks = list(checks)
        self.title = title
        self.atol = atol
        self.rtol = rtol

    @property
    def ok(self) -> bool:
        return super().ok and all(check.ok for check in self.checks)

    def __repr__(self) -> str:
        return f"<GradReport {self.title}: {self._summary()}>"

    def _summary(self) -> str:
        wrong = sum(not row.ok for row in self.rows)
        broken = [check.name for check in self.checks if not check.ok]
        contract = f"; the backward contract is broken: {', '.join(broken)}" if broken else ""
        if wrong == 0:
            return f"all {len(self.rows)} gradients match{contract}"
        first = f"; first wrong: {self.first_wrong}" if self.first_wrong else ""
        return f"{wrong} of {len(self.rows)} gradients do not match{first}{contract}"

    def __str__(self) -> str:
        lines = [f"{self.title}: {self._summary()}  (atol={self.atol:g}, rtol={self.rtol:g})", ""]
        header = ("name", "shape", "max abs err", "max rel err", "worst at", "out of tol", "verdict")
        lines += format_table(header, [_cells(row) for row in self.rows])
        notes = [f"{row.name}: {row.diagnosis}" for row in self.rows if row.diagnosis]
        if notes:
            lines += [""] + notes
        if self.checks:
            lines += ["", "backward contract:"]
            lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}" + (f": {c.detail}" if c.detail else "")
                      for c in self.checks]
        return "\n".join(lines)


def _number(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.2e}"


def _cells(row: GradRow) -> tuple[str, ...]:
    worst = "-" if row.worst_index is None else str(row.worst_index)
    return (row.name, str(row.shape), _number(row.max_abs_err), _number(row.max_rel_err), worst,
            f"{100 * row.frac_bad:.3g}%", row.verdict)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a left-aligned text table.

    >>> print("\\n".join(format_table(("name", "ok"), [("W1", "yes")])))
    name  ok
    W1    yes
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def compare_row(name: str, expected: Any, actual: Any, atol: float, rtol: float,
                context: Context | None = None) -> GradRow:
    """Compare one gradient with its expected value; diagnose it when it does not match.

    >>> compare_row("W", np.ones(2), np.ones(2), 1e-8, 1e-5).ok
    True
    """
    e, a = _as_array(name, expected), _as_array(name, actual)
    atol = rounding_atol(atol, expected, actual)
    if e.shape != a.shape:
        return _missing_row(name, e.shape, diagnose(Evidence(e, a, atol, rtol, context)))
    error = np.abs(a - e)
    bad = ~(error <= atol + rtol * np.abs(e))  # NaN counts as bad
    if e.size == 0:
        return GradRow(name, e.shape, 0.0, 0.0, None, 0.0, True, "ok", "")
    worst = np.unravel_index(int(np.argmax(np.where(np.isnan(error), np.inf, error))), e.shape)
    max_abs = float(error[worst]) if np.isfinite(error).all() else np.nan
    ok = not bad.any()
    sentence = "" if ok else diagnose(Evidence(e, a, atol, rtol, context))
    return GradRow(name, e.shape, max_abs, max_abs / max(float(np.abs(e).max()), 1e-300),
                   tuple(int(i) for i in worst), float(bad.mean()), ok, "ok" if ok else "mismatch", sentence)


# Rounding in a float32 forward and backward leaves an error of a few units in the last place
# of the gradient's largest entry on any entry (each is a sum of many rounded terms): up to 10
# in the nets measured (batches of 8 to 1,257, two and three layers, up to 1,024 wide), so 32
# leaves a margin and still sees an L2 term of reg = 3e-5 left out of a float32 digits net.
_ROUNDING_ULPS = 32


def rounding_atol(atol: float, expected: Any, actual: Any) -> float:
    """``atol``, raised to what rounding leaves in the less precise of the two gradients' dtypes:
    32 units in the last place of the largest expected entry. In float64 that is below the
    default atol for gradients up to 1e6; in float32 it keeps rounding from reading as a mistake.

    >>> rounding_atol(1e-8, np.ones(2, np.float32), np.ones(2, np.float32))  # 32 * 2**-23
    3.814697265625e-06
    """
    expected, actual = np.asarray(expected), np.asarray(actual)
    eps = max(np.finfo(x.dtype).eps if x.dtype.kind == "f" else 0.0 for x in (expected, actual))
    largest = np.abs(expected).max(initial=0.0) if expected.dtype.kind in "fiu" else 0.0
    return max(atol, _ROUNDING_ULPS * float(eps) * float(largest)) if np.isfinite(largest) else atol


def _as_array(name: str, gradient: Any) -> np.ndarray:
    array = np.asarray(gradient)
    if array.dtype.kind not in "fiub":  # None would become nan, strings fail obscurely
        what = f"an array of dtype {array.dtype}" if isinstance(gradient, np.ndarray) else \
            f"a {type(gradient).__name__}"
        raise TypeError(f"the gradient given for {name!r} is {what}, not an array of real numbers")
    return array.astype(np.float64)


def _missing_row(name: str, shape: tuple[int, ...], sentence: str) -> GradRow:
    return GradRow(name, shape, np.nan, np.nan, None, 1.0, False, "mismatch", sentence)


def _mark_first_wrong(rows: list[GradRow]) -> tuple[list[GradRow], str | None]:
    for i, row in enumerate(rows):
        if not row.ok:
            rows = rows[:i] + [dataclasses.replace(row, verdict="WRONG")] + rows[i + 1:]
            return rows, row.name
    return rows, None


# -- finite differences --------------------------------------------------------------------
def _is_differentiable(x: Any) -> bool:
    if isinstance(x, Tensor):
        return x.requires_grad
    return np.asarray(x).dtype.kind == "f" if isinstance(x, (np.ndarray, float)) else False


def _float64_copies(inputs: Sequence[Any],
                    as_tensors: bool = False) -> tuple[list[Any], list[np.ndarray | None]]:
    """What ``f`` is called with for finite differences: float64 copies of the differentiable
    inputs (each in the kind it came as, Tensor or array, unless ``as_tensors``), copies of the
    other arrays; and the float64 arrays to perturb in place (None where not differentiated)."""
    args: list[Any] = []
    arrays: list[np.ndarray | None] = []
    for x in inputs:
        if _is_differentiable(x):
            array = np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64)
            wrap = as_tensors or isinstance(x, Tensor)
            args.append(Tensor(array, name=getattr(x, "name", None)) if wrap else array)
            arrays.append(array)
        else:
            args.append(_copy_constant(x))
            arrays.append(None)
    return args, arrays


def _copy_constant(x: Any) -> Any:
    """An input that is not differentiated, copied so ``f`` cannot change the caller's."""
    if isinstance(x, Tensor):
        return Tensor(x.data.copy(), name=x.name)
    return x.copy() if isinstance(x, np.ndarray) else x


def _evaluate(f: Callable[..., Any], args: Sequence[Any]) -> np.ndarray:
    with no_grad():
        out = f(*args)
    return np.asarray(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def _numerical_jacobian(f: Callable[..., Any], args: list[Any], x: np.ndarray, eps: float) -> np.ndarray:
    """d f(*args) / d x by central differences, shape ``f's output shape + x.shape``."""
    out_shape = _evaluate(f, args).shape
    jacobian = np.empty(out_shape + x.shape)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        plus = _evaluate(f, args)
        x[idx] = old - eps
        minus = _evaluate(f, args)
        x[idx] = old
        with np.errstate(all="ignore"):  # inf - inf at a log(0) is the report's to show, not a warning
            jacobian[(Ellipsis, *idx)] = (plus - minus) / (2 * eps)
    return jacobian


def _numerical_directional(f: Callable[..., Any], args: list[Any], x: np.ndarray, direction: np.ndarray,
                           eps: float) -> np.ndarray:
    """The change of f(*args) along ``direction`` in x, by central differences."""
    saved = x.copy()
    x += eps * direction
    plus = _evaluate(f, args)
    x[...] = saved - eps * direction
    minus = _evaluate(f, args)
    x[...] = saved
    with np.errstate(all="ignore"):
        return (plus - minus) / (2 * eps)


def numerical_grad(f: Callable[..., Any], inputs: Sequence[Any], eps: float = 1e-6) -> list[Any]:
    """Central differences, in float64, of a scalar function ``f(*inputs)`` for each input.

    Differentiable inputs are Tensors with ``requires_grad`` and floating arrays or floats;
    ``f`` gets float64 copies of them (Tensors stay Tensors), so the inputs are never
    mutated. Other inputs (labels, ...) are passed through copied and get None.

    >>> numerical_grad(lambda x: (x ** 3).sum(), [np.array([1.0, 2.0])])[0].round(6)
    array([ 3., 12.])
    """
    inputs = list(inputs)
    args, arrays = _float64_copies(inputs)
    value = _evaluate(f, args)
    if value.size != 1:
        raise ValueError(f"numerical_grad: f must return a scalar, but it returned shape {value.shape}; "
                         f"reduce it (e.g. .sum()) or use gradcheck for a full Jacobian")
    return [None if x is None else _numerical_jacobian(f, args, x, eps).reshape(x.shape) for x in arrays]


# -- gradcheck -----------------------------------------------------------------------------
_FULL_JACOBIAN_LIMIT = (100, 1000)  # output elements, total input elements
_PROJECTIONS = 3


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """Non-uniform values of ``shape``; an ndarray even for shape () (the tape wants arrays)."""
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def _label(x: Any, i: int) -> str:
    return x.name if isinstance(x, Tensor) and x.name else f"input {i}"


def _tape_args(inputs: Sequence[Any]) -> tuple[list[Any], list[Tensor]]:
    """What ``f`` is called with for the tape: fresh leaves holding copies (dtype kept) for the
    differentiable inputs, copies of the rest; and the leaves."""
    args: list[Any] = []
    leaves: list[Tensor] = []
    for i, x in enumerate(inputs):
        if _is_differentiable(x):
            data = x.data if isinstance(x, Tensor) else x
            leaves.append(Tensor(np.array(data), requires_grad=True, name=_label(x, i)))
            args.append(leaves[-1])
        else:
            args.append(_copy_constant(x))
    return args, leaves


def _warn_if_not_double(leaves: Sequence[Tensor]) -> None:
    for leaf in leaves:
        if leaf.dtype != np.float64:
            warnings.warn(
                f"gradcheck: input {leaf.name!r} is {leaf.dtype}, not float64; its tape gradient is "
                f"compared with float64 finite differences, so expect mismatches of its precision",
                stacklevel=3)


def _tape_gradients(out: Tensor, leaves: Sequence[Tensor], upstream: np.ndarray) -> list[np.ndarray]:
    upstream = np.asarray(upstream, dtype=out.dtype)  # 0-d arithmetic gives NumPy scalars, not arrays
    grads = grad(out, list(leaves), grad_outputs=upstream, retain_graph=True)
    return [np.zeros(leaf.shape, leaf.dtype) if g is None else g for g, leaf in zip(grads, leaves)]


def _full_jacobians(f: Callable[..., Any], out: Tensor, leaves: Sequence[Tensor], numeric_args: list[Any],
                    arrays: list[np.ndarray], eps: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(by finite differences, by the tape) Jacobian pairs, shaped output shape + input shape."""
    tape_jac = [np.empty(out.shape + leaf.shape) for leaf in leaves]
    for idx in np.ndindex(out.shape):
        unit = np.zeros(out.shape, out.dtype)
        unit[idx] = 1
        for jac, g in zip(tape_jac, _tape_gradients(out, leaves, unit)):
            jac[idx] = g
    numeric = [_numerical_jacobian(f, numeric_args, x, eps) for x in arrays]
    return list(zip(numeric, tape_jac))


def _projections(f: Callable[..., Any], out: Tensor, leaves: Sequence[Tensor], numeric_args: list[Any],
                 arrays: list[np.ndarray], eps: float,
                 rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """v^T J u for a few random v (output-shaped) and u (input-shaped), numerically and by tape."""
    numeric = np.empty((len(leaves), _PROJECTIONS))
    by_tape = np.empty((len(leaves), _PROJECTIONS))
    for t in range(_PROJECTIONS):
        v = _random(rng, out.shape)
        grads = _tape_gradients(out, leaves, v)
        for k, (x, g) in enumerate(zip(arrays, grads)):
            u = _random(rng, x.shape)
            by_tape[k, t] = np.sum(g * u)
            numeric[k, t] = np.sum(_numerical_directional(f, numeric_args, x, u, eps) * v)
    return list(zip(numeric, by_tape))


def _op_input_row(t: Tensor, i: int, graph: _Graph, g: np.ndarray, eps: float, atol: float,
                  rtol: float) -> tuple[GradRow, int]:
    """One recorded op's backward rule for input ``i``, alone, against finite differences of its
    forward at the values it saw, for the upstream gradient ``g``; and, for a relu whose rule
    disagrees only at inputs within ``eps`` of its kink at 0, how many such inputs there are
    (a difference quotient across the kink is no derivative), else 0."""
    node = t._node
    values = node.arrays

    def forward_with(x: np.ndarray) -> Any:
        return np.sum(node.op.either(*values[:i], x, *values[i + 1:], **node.params) * g)

    (numeric,) = numerical_grad(forward_with, [np.asarray(values[i], dtype=np.float64)], eps)
    by_rule = _rule(t, i, g)
    use = dataclasses.replace(graph.step(t), index=i, grad_output=g, rest=np.zeros(np.shape(values[i])))
    context = Context(label=use.labels[i], uses=(use,), batch_size=graph.batch_size)
    row = compare_row(use.labels[i], numeric, by_rule, atol, rtol, context)
    at_kink = np.abs(values[i]) <= eps if node.op.name == "relu" and not row.ok else np.zeros(0, bool)
    if at_kink.any() and Evidence(numeric, by_rule, atol, rtol).fits(numeric, where=~at_kink):
        return row, int(at_kink.sum())
    return row, 0


def _diagnose_ops(out: Tensor, leaves: Sequence[Tensor], rows: dict[int, GradRow], rng: np.random.Generator,
                  eps: float, atol: float, rtol: float) -> dict[int, GradRow]:
    """Name the op whose backward rule is wrong, in each wrong row: every op on the tape is
    checked alone, and a row gets the wrong op closest to the output that it depends on."""
    graph = _Graph(out)
    wrong_ops = []
    for t in recorded_nodes([out]):  # closest to the output first
        g = _random(rng, t.shape)
        step = graph.step(t)
        for i, a in enumerate(t._node.inputs):
            if isinstance(a, Tensor) and a.requires_grad and a.size <= _FULL_JACOBIAN_LIMIT[1]:
                row, at_kink = _op_input_row(t, i, graph, g, eps, atol, rtol)
                if row.ok:
                    continue
                line = f"{graph.labels[id(t)]} = {step.op}({', '.join(step.labels)})"
                if at_kink:  # the rule agrees everywhere else
                    inputs = f"{at_kink} of its inputs lie" if at_kink > 1 else "1 of its inputs lies"
                    wrong_ops.append((t, f"finite differences cannot judge relu in `{line}`: {inputs} within "
                                         f"eps={eps:g} of its kink at 0, where the difference quotient "
                                         f"straddles the kink, and its rule agrees everywhere else; check "
                                         f"at inputs away from 0, or with a smaller eps"))
                else:
                    wrong_ops.append((t, f"the backward rule of {step.op} in `{line}` is wrong for its "
                                         f"input {row.name}: it {row.diagnosis}"))
    diagnosed = dict(rows)
    for leaf in leaves:
        culprits = [sentence for t, sentence in wrong_ops if id(leaf) in graph.ancestors(t)]
        if not rows[id(leaf)].ok and culprits:
            diagnosed[id(leaf)] = dataclasses.replace(rows[id(leaf)], diagnosis=culprits[0])
    return diagnosed


def _backward_order(output: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """``tensors`` in the order backward finishes their gradients: closest to the output first.

    A tensor's gradient is complete once the earliest op that used it has been replayed.
    """
    first_use: dict[int, tuple[float, int]] = {}
    for t in recorded_nodes([output]):
        for i, a in enumerate(t._node.inputs):
            if isinstance(a, Tensor):
                first_use[id(a)] = min(first_use.get(id(a), (np.inf, 0)), (t._node.position, i))
    return sorted(tensors, key=lambda t: first_use.get(id(t), (np.inf, 0)), reverse=True)


def gradcheck(f: Callable[..., Any], inputs: Sequence[Any], eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, *, mode: str = "auto", seed: int = 0) -> GradReport:
    """The tape's gradients of ``f(*inputs)`` against central differences, plus the backward contract.

    ``mode="full"`` compares whole Jacobians (output shape + input shape, so ``worst at`` is
    an output index followed by an input index); ``"projection"`` compares ``v^T J u`` for
    three random ``v``, ``u`` per input; ``"auto"`` picks full for up to 100 output and 1,000
    input elements. The contract checks run with random, non-uniform upstream gradients.

    >>> x = Tensor(np.array([0.5, -1.0]), requires_grad=True, name="x")
    >>> bool(gradcheck(lambda x: x.tanh() * 3, [x]))
    True
    """
    inputs = list(inputs)
    args, leaves = _tape_args(inputs)
    if not leaves:
        raise ValueError("gradcheck: no input to check; pass Tensors with requires_grad=True "
                         "or floating-point arrays")
    _warn_if_not_double(leaves)
    originals = [leaf.data.copy() for leaf in leaves]
    out = f(*args)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise ValueError("gradcheck: f must return a Tensor computed from its inputs with the tape on")
    numeric_args, arrays = _float64_copies(inputs, as_tensors=True)
    arrays = [x for x in arrays if x is not None]
    if mode == "auto":
        small = out.size <= _FULL_JACOBIAN_LIMIT[0] and sum(x.size for x in arrays) <= _FULL_JACOBIAN_LIMIT[1]
        mode = "full" if small else "projection"
    rng = np.random.default_rng(seed)
    if mode == "full":
        pairs = _full_jacobians(f, out, leaves, numeric_args, arrays, eps)
    elif mode == "projection":
        pairs = _projections(f, out, leaves, numeric_args, arrays, eps, rng)
    else:
        raise ValueError(f"gradcheck: mode must be 'auto', 'full' or 'projection', got {mode!r}")
    by_leaf = {id(leaf): compare_row(leaf.name, e, a, atol, rtol) for leaf, (e, a) in zip(leaves, pairs)}
    if not all(row.ok for row in by_leaf.values()):
        by_leaf = _diagnose_ops(out, leaves, by_leaf, rng, eps, atol, rtol)
    rows, first_wrong = _mark_first_wrong([by_leaf[id(t)] for t in _backward_order(out, leaves)])
    checks = _contract_checks(out, leaves, originals, rng, atol, rtol)
    return GradReport(rows, first_wrong, checks, f"gradcheck ({mode})", atol, rtol)


# -- the backward contract -----------------------------------------------------------------
def _contract_checks(out: Tensor, leaves: Sequence[Tensor], originals: Sequence[np.ndarray],
                     rng: np.random.Generator, atol: float, rtol: float) -> list[ContractCheck]:
    v = _random(rng, out.shape, out.dtype)
    w = _random(rng, out.shape, out.dtype)
    upstream = v.copy()
    g_v = _tape_gradients(out, leaves, v)
    g_again = _tape_gradients(out, leaves, v)
    g_w = _tape_gradients(out, leaves, w)
    g_mix = _tape_gradients(out, leaves, 2 * v - 3 * w)
    g_zero = _tape_gradients(out, leaves, np.zeros_like(v))
    names = [leaf.name for leaf in leaves]

    def failing(pairs: Any) -> list[str]:
        return [name for name, bad in zip(names, pairs) if bad]

    arrays = [*g_v, v, *(leaf.data for leaf in leaves)]
    aliased = [name for i, (name, g) in enumerate(zip(names, g_v))
               if any(np.shares_memory(g, other) for j, other in enumerate(arrays) if j != i)]
    same = lambda a, b: np.array_equal(a, b, equal_nan=True)
    results = {
        "gradients have the inputs' shapes and dtypes":
            failing(g.shape != x.shape or g.dtype != x.dtype for g, x in zip(g_v, leaves)),
        "a zero upstream gradient gives zero gradients": failing(np.any(g != 0) for g in g_zero),
        "gradients are linear in the upstream gradient":
            failing(not np.allclose(m, 2 * a - 3 * b, atol=atol, rtol=rtol)
                    for m, a, b in zip(g_mix, g_v, g_w)),
        "two backward runs agree": failing(not same(a, b) for a, b in zip(g_v, g_again)),
        "inputs are not mutated": failing(not same(x.data, o) for x, o in zip(leaves, originals)),
        "the upstream gradient is not mutated": [] if np.array_equal(v, upstream) else ["upstream"],
        "gradients alias nothing (each other, the inputs, the upstream)": aliased,
    }
    return [ContractCheck(name, not bad, f"fails for {', '.join(bad)}" if bad else "")
            for name, bad in results.items()]


# -- hand-written gradients against the tape -----------------------------------------------
def compare_grads(expected: Mapping[str, Any], actual: Mapping[str, Any], atol: float = 1e-8,
                  rtol: float = 1e-5, params: Mapping[str, Any] | None = None, *,
                  batch_size: int | None = None) -> GradReport:
    """Compare two mappings name -> gradient, e.g. the tape's against hand-written backprop.

    ``params`` (name -> weight array) lets the diagnosis recognise a missing or extra L2 term;
    ``batch_size`` lets it name a factor N. Rows follow ``expected``'s order, and
    ``first_wrong`` is the first mismatching one (use ``check_manual`` for backward order).

    >>> report = compare_grads({"W": np.ones((2, 2))}, {"W": 4 * np.ones((2, 2))}, batch_size=4)
    >>> report["W"].diagnosis[:60]
    'is N = 4 times the expected gradient, N the batch size: the '
    """
    params = dict(params or {})
    rows = []
    for name in [*expected, *(n for n in actual if n not in expected)]:
        if name not in actual:
            rows.append(_missing_row(name, np.shape(expected[name]), "no gradient was given for it"))
        elif name not in expected:
            rows.append(_missing_row(name, np.shape(actual[name]), "has no expected gradient to compare"))
        else:
            value = params.get(name)
            context = Context(label=name, value=None if value is None else np.asarray(value),
                              is_parameter=name in params, batch_size=batch_size)
            rows.append(compare_row(name, expected[name], actual[name], atol, rtol, context))
    rows, first_wrong = _mark_first_wrong(rows)
    return GradReport(rows, first_wrong, title="compare_grads", atol=atol, rtol=rtol)


class _Graph:
    """The recorded graph behind an output: its tensors, what each is called, and who used it."""

    def __init__(self, output: Tensor) -> None:
        expect_tensor(output, "check_manual")
        self.output = output
        nodes = recorded_nodes([output])  # latest first
        if any(t._node.freed for t in nodes):
            raise RuntimeError("check_manual: the output's graph was released by a backward() that ran "
                               "before; call check_manual before loss.backward(), or pass "
                               "retain_graph=True to that backward")
        self.tensors: dict[int, Tensor] = {}
        self.users: dict[int, list[tuple[Tensor, int]]] = {}
        for t in nodes:
            self.tensors[id(t)] = t
            for i, a in enumerate(t._node.inputs):
                if isinstance(a, Tensor):
                    self.tensors.setdefault(id(a), a)
                    self.users.setdefault(id(a), []).append((t, i))
        self.labels = self._tape_labels(nodes)
        self.batch_size = _batch_size(nodes)

    def _tape_labels(self, nodes: list[Tensor]) -> dict[int, str]:
        """Each tensor's name, or the label ``mt.tape(output)`` prints for it (v3, leaf0, ...)."""
        labels = {}
        for t, entry in zip(reversed(nodes), tape(self.output)):
            labels[id(t)] = entry.output
            for a, label in zip(t._node.inputs, entry.inputs):
                if isinstance(a, Tensor):
                    labels.setdefault(id(a), label)
        return labels

    def named(self, name: str) -> Tensor:
        found = [t for t in self.tensors.values() if t.name == name]
        if len(found) != 1:
            known = sorted({t.name for t in self.tensors.values() if t.name})
            problem = "no tensor" if not found else f"{len(found)} tensors"
            raise ValueError(f"check_manual: {problem} named {name!r} in the graph of the output; "
                             f"named tensors are {known} (name intermediates with .named(...))")
        if not found[0].requires_grad:
            raise ValueError(f"check_manual: {name!r} does not require grad, so it has no gradient; "
                             f"create it with requires_grad=True or leave it out")
        return found[0]

    def step(self, t: Tensor) -> Step:
        node = t._node
        return Step(node.op.name, tuple(node.arrays),
                    tuple(self.labels.get(id(a), repr(a)) for a in node.inputs), t.data, node.params)

    def uses(self, t: Tensor, grads: Mapping[int, Any]) -> tuple[Step, ...]:
        """The ops that used ``t``, each with the share of ``t``'s tape gradient from other paths."""
        steps = []
        total = _gradient(grads, t)
        for user, i in self.users.get(id(t), []):
            g = grads.get(id(user))
            if g is None:
                continue
            through = _rule(user, i, g)
            steps.append(dataclasses.replace(self.step(user), index=i, grad_output=g, rest=total - through))
        return tuple(steps)

    def contexts(self, tensors: Sequence[Tensor], upstream: Any,
                 explains: Callable[[Tensor, np.ndarray], bool]) -> tuple[dict[int, Any], dict[int, Context]]:
        """The tape's gradients of ``tensors`` for ``upstream``, and what the diagnosis may know
        about each: its value, the op that made it, the ops that used it, N, the other tensors.
        ``explains(t, g)`` says whether ``g`` is the gradient the user gave for ``t``."""
        users = [u for t in tensors for u, _ in self.users.get(id(t), [])]
        wanted = list({id(t): t for t in [*tensors, *users]}.values())
        grads = dict(zip(map(id, wanted),
                         grad(self.output, wanted, grad_outputs=upstream, retain_graph=True)))
        values = {self.labels[key]: t.data for key, t in self.tensors.items() if t.dtype.kind == "f"}
        carried = self.carried_mistakes(tensors, upstream, values,
                                        lambda t, error: explains(t, _gradient(grads, t) + error))
        contexts = {id(t): Context(label=self.labels[id(t)], value=t.data, is_parameter=t.is_leaf,
                                   producer=None if t.is_leaf else self.step(t), uses=self.uses(t, grads),
                                   batch_size=self.batch_size, tensors=values,
                                   downstream=tuple(carried[id(t)])) for t in tensors}
        return grads, contexts

    def carried_mistakes(self, tensors: Sequence[Tensor], upstream: Any, values: Mapping[str, np.ndarray],
                         off_by: Callable[[Tensor, np.ndarray], bool]) -> dict[int, list]:
        """For each of ``tensors``, the :class:`Carried` error of each classic mistake at a later
        step (the softmax loss, a mean's 1/N, an activation). Backprop is linear in a step's
        gradient, so the tape carries a mistake back exactly as hand-written steps do. A mistake
        made at a step reaches every checked tensor before it: ``everywhere`` says whether
        ``off_by(t, error)`` holds for all of them. It never does when the step's input was
        checked too and is right: a tensor before it off by such an error took a wrong gradient."""
        carried: dict[int, list[Carried]] = {id(t): [] for t in tensors}
        ancestors = functools.cache(lambda key: self.ancestors(self.tensors[key]))
        for step_output in self.tensors.values():
            node = step_output._node
            if node is None or node.op.name not in MISTAKEN_OPS or not isinstance(node.inputs[0], Tensor):
                continue
            x = node.inputs[0]
            checked = id(x) in carried
            before = [t for t in tensors if id(t) in ancestors(id(x))]
            if not before or checked and not off_by(x, np.zeros(x.shape)):
                continue  # x's own row names its mistake, and the tensors before it inherit it
            # An intermediate with nothing checked between it and the step: its own formula (dscores,
            # say) goes through the step. A parameter's formula (h.T @ dscores) only takes its result.
            nearest = {id(t) for t in before if not checked and not t.is_leaf and
                       not any(id(t) in ancestors(id(u)) for u in before if u is not t)}
            (g,) = grad(self.output, [step_output], grad_outputs=upstream, retain_graph=True)
            step = dataclasses.replace(self.step(step_output), grad_output=g)
            where = self.labels[id(x)] if x.name else f"{self.labels[id(x)]}, the input of {node.op.name},"
            for mistake, error in step_mistakes(step, _rule(step_output, 0, g), values, self.batch_size):
                errors = grad(x, before, grad_outputs=error, retain_graph=True)
                shares = [(t, e) for t, e in zip(before, errors) if e is not None]
                everywhere = not checked and all(off_by(t, e) for t, e in shares)
                for t, e in shares:
                    carried[id(t)].append(Carried(f"the gradient at {where} {mistake}", e, everywhere,
                                                  id(t) in nearest))
        return carried

    def ancestors(self, t: Tensor) -> set[int]:
        seen: set[int] = set()
        stack = [t]
        while stack:
            node = stack.pop()._node
            for a in node.inputs if node is not None else ():
                if isinstance(a, Tensor) and id(a) not in seen:
                    seen.add(id(a))
                    stack.append(a)
        return seen


def _rule(t: Tensor, i: int, g: np.ndarray) -> np.ndarray:
    """What the tape's backward rule of the op that made ``t`` sends to its input ``i`` for the
    upstream gradient ``g``, at the values the op saw (summed back to the input's shape)."""
    node = t._node
    with np.errstate(all="ignore"):  # as in backward: a VJP at log(0) gives inf, not a warning
        through = node.op.vjps[i](g, t.data, *node.arrays, **node.first_order_params())
    return np.asarray(unbroadcast(through, np.shape(node.arrays[i])), dtype=np.float64)


def _gradient(grads: Mapping[int, Any], t: Tensor) -> np.ndarray:
    g = grads.get(id(t))
    return np.zeros(t.shape) if g is None else np.asarray(g, dtype=np.float64)


def _batch_size(nodes: list[Tensor]) -> int | None:
    """The N of the last mean over a batch before the output: a cross-entropy, a mean, or a sum
    over N rows divided by N (not any division by a whole number: the / 2 of an L2 term is none)."""
    for t in nodes:
        op, inputs = t._node.op.name, t._node.inputs
        if op == "softmax_cross_entropy":
            return inputs[0].shape[0]
        if op == "mean" and inputs[0].size > t.size:
            return inputs[0].size // t.size
        n = _divisor(op, inputs)
        if n and _is_sum_over_rows(t, n):
            return n
    return None


def _divisor(op: str, inputs: tuple) -> int | None:
    """The whole number N > 1 that ``x / N`` or ``x * (1 / N)`` (or ``-1/N * x``) divides by."""
    scalars = [a for a in inputs if not isinstance(a, Tensor) and np.size(a) == 1]
    if len(scalars) != 1 or len(inputs) != 2 or (op == "div" and scalars[0] is not inputs[1]):
        return None
    scalar = float(np.ravel(scalars[0])[0])  # a 1-element array of any shape, too
    if op == "div":
        value = scalar
    elif op == "mul" and scalar:
        value = 1 / abs(scalar)
    else:
        return None
    return round(value) if value > 1.5 and abs(value - round(value)) < 1e-9 * value else None


def _is_sum_over_rows(t: Tensor, n: int) -> bool:
    """Whether ``t`` is ``-x.sum()`` (a sign or scalar factors allowed), x of n rows from the data."""
    node = t._node
    while node is not None and node.op.name in ("neg", "mul", "div"):  # the division itself, a sign, a factor
        tensors = [a for a in node.inputs if isinstance(a, Tensor)]
        if len(tensors) != 1 or any(np.size(a) != 1 for a in node.inputs if a is not tensors[0]):
            return False
        node = tensors[0]._node
    if node is None or node.op.name != "sum" or not isinstance(node.inputs[0], Tensor):
        return False
    summed = node.inputs[0]
    return summed.shape[:1] == (n,) and _reads_rows_of_data(summed, n)


def _reads_rows_of_data(t: Tensor, n: int) -> bool:
    """Whether ``t`` is computed from an array of ``n`` rows that is no parameter: the data, or
    labels. An L2 term, a function of the weights alone, is not (W's rows are its inputs)."""
    stack, seen = [t], set()
    while stack:
        node = stack.pop()._node
        for a in node.inputs if node is not None else ():
            if isinstance(a, Tensor) and a.requires_grad:
                if id(a) not in seen:
                    seen.add(id(a))
                    stack.append(a)
            elif np.ndim(a) and np.shape(a)[0] == n:
                return True
    return False


def check_manual(output: Tensor, manual: Mapping[str, Any], atol: float = 1e-8, rtol: float = 1e-5, *,
                 gradient: Any = None) -> GradReport:
    """Compare hand-computed gradients of ``output`` with the tape, for every named tensor.

    ``manual`` maps tensor names (parameters and intermediates named with ``.named``) to your
    gradients. Rows are in backward order, output first; ``first_wrong`` is the first
    mismatching tensor whose downstream named tensors all match: the step whose hand-derived
    rule is wrong. ``gradient`` is the upstream gradient for a non-scalar output. No ``.grad``
    is touched, and the graph is kept.

    >>> x = Tensor([[1.0, -2.0]], requires_grad=True, name="x")
    >>> h = x.relu().named("h")
    >>> report = check_manual(h.sum(), {"h": np.ones((1, 2)), "x": np.ones((1, 2))})
    >>> report.first_wrong, report["x"].diagnosis[:45]
    ('x', 'passes the gradient through the ReLU unmasked')
    """
    graph = _Graph(output)
    tensors = _backward_order(output, [graph.named(name) for name in manual])
    given = {id(t): _as_array(t.name, manual[t.name]) for t in tensors}

    def explains(t: Tensor, predicted: np.ndarray) -> bool:
        tolerance = rounding_atol(atol, predicted.astype(t.dtype), manual[t.name])
        return Evidence(predicted, given[id(t)], tolerance, rtol).fits(predicted)

    grads, contexts = graph.contexts(tensors, gradient, explains)
    rows = [compare_row(t.name, _gradient(grads, t), manual[t.name], atol, rtol, contexts[id(t)])
            for t in tensors]
    rows, first_wrong = _mark_first_wrong(rows)
    rows = _note_inherited(rows, tensors, graph)
    return GradReport(rows, first_wrong, title="check_manual", atol=atol, rtol=rtol)


def _note_inherited(rows: list[GradRow], tensors: list[Tensor], graph: _Graph) -> list[GradRow]:
    """Tell a wrong row that a wrong gradient downstream of it may be the cause."""
    wrong = [(row, graph.ancestors(t)) for t, row in zip(tensors, rows) if not row.ok]
    noted = []
    for t, row in zip(tensors, rows):
        downstream = [cause for cause, ancestors in wrong if id(t) in ancestors]
        if row.ok or row.verdict == "WRONG" or not downstream:
            noted.append(row)
            continue
        cause = downstream[0]
        if row.diagnosis == cause.diagnosis:
            sentence = f"carries the mistake of {cause.name!r} along (fix that first)"
        else:
            sentence = (f"may follow from the wrong gradient of {cause.name!r} (fix that first); on its "
                        f"own it {row.diagnosis}")
        noted.append(dataclasses.replace(row, diagnosis=sentence))
    return noted
