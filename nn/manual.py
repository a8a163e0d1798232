"""Closed-form backprop for chains of Linear and activation layers: the notebooks' formulas.

NumPy only; nothing here records on the tape. The loss is softmax cross-entropy averaged
over the batch plus ``0.5 * reg * sum(W**2)`` over the Linear weights (not the biases), as
``nn.functional.cross_entropy`` and ``nn.functional.l2_penalty``. :func:`gradients` gives
every parameter's gradient by the formulas; :func:`check` compares the tape, the formulas
and finite differences, parameter by parameter.

>>> import numpy as np, nn
>>> model = nn.TwoLayerNet(3, 4, 2, seed=0, dtype=np.float64)
>>> X, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
>>> sorted(gradients(model, X, y))
['fc1.bias', 'fc1.weight', 'fc2.bias', 'fc2.weight']
>>> bool(check(model, X, y, reg=0.1))
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import microtensor as mt
from microtensor.check import format_table
from nn import functional
from nn.layers import Dropout, Linear, ReLU, Sigmoid, Tanh
from nn.module import Module, Parameter

# Each activation's forward and its derivative in terms of (upstream g, input x, output out).
_ACTIVATIONS: dict[type, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    ReLU: (lambda x: np.maximum(x, 0), lambda g, x, out: g * (x > 0)),
    Sigmoid: (lambda x: 1 / (1 + np.exp(-x)), lambda g, x, out: g * out * (1 - out)),
    Tanh: (np.tanh, lambda g, x, out: g * (1 - out * out)),
}


def chain(model: Module) -> list[tuple[str, Module]]:
    """The model's layers in order, checked to be Linear and activations ending in a Linear.

    Dropout is skipped when it is the identity (``p == 0`` or eval mode) and refused otherwise.

    >>> [name for name, _ in chain(__import__("nn").TwoLayerNet(2, 3, 2))]
    ['fc1', 'relu', 'fc2']
    """
    layers = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # a container: its layers follow
        where = name or type(model).__name__
        if isinstance(module, Dropout):
            if module.training and module.p > 0:
                raise ValueError(f"nn.manual: {where} is Dropout(p={module.p}) in training mode, which the "
                                 f"closed-form backprop does not model; call model.eval() first")
            continue
        if not isinstance(module, (Linear, *_ACTIVATIONS)):
            raise TypeError(f"nn.manual: {where} is a {type(module).__name__}; manual backprop knows chains "
                            f"of Linear, ReLU, Sigmoid and Tanh layers (and Dropout in eval mode)")
        layers.append((name, module))
    if not layers or not isinstance(layers[-1][1], Linear):
        raise TypeError(f"nn.manual: {type(model).__name__} must end with a Linear layer giving the logits")
    _check_every_parameter_is_in_a_linear(model, layers)
    return layers


def _dotted(layer_name: str, attribute: str) -> str:
    return f"{layer_name}.{attribute}" if layer_name else attribute


def _parameter_names(name: str, layer: Linear) -> Iterator[tuple[str, Parameter]]:
    yield _dotted(name, "weight"), layer.weight
    if layer.bias is not None:
        yield _dotted(name, "bias"), layer.bias


def _check_every_parameter_is_in_a_linear(model: Module, layers: list[tuple[str, Module]]) -> None:
    known = {dotted for name, layer in layers if isinstance(layer, Linear)
             for dotted, _ in _parameter_names(name, layer)}
    stray = [name for name, _ in model.named_parameters() if name not in known]
    if stray:
        raise TypeError(f"nn.manual: parameters {stray} are not in a Linear layer of the chain; "
                        f"manual backprop cannot account for them")


def _targets(y: Any, n: int, classes: int) -> np.ndarray:
    """Target rows (n, classes): one-hot rows for int labels, else the rows as given."""
    labels = np.asarray(y.data if isinstance(y, mt.Tensor) else y)
    if labels.shape == (n,) and labels.dtype.kind in "iu":
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"nn.manual: labels must be in [0, {classes}), "
                             f"got {labels.min()}..{labels.max()}")
        return np.eye(classes)[labels]
    if labels.shape == (n, classes):
        return labels.astype(np.float64)
    raise ValueError(f"nn.manual: y has shape {labels.shape}; expected int labels ({n},) "
                     f"or one-hot ({n}, {classes})")


def _forward(layers: list[tuple[str, Module]], X: np.ndarray) -> list[np.ndarray]:
    """Every layer's input, then the logits: the cache the backward formulas read."""
    values = [X]
    for _, layer in layers:
        x = values[-1]
        if isinstance(layer, Linear):
            out = x @ layer.weight.data.astype(np.float64)
            values.append(out if layer.bias is None else out + layer.bias.data.astype(np.float64))
        else:
            values.append(_ACTIVATIONS[type(layer)][0](x))
    return values


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def gradients(model: Module, X: Any, y: Any, reg: float = 0.0, *,
              layer_outputs: bool = False) -> dict[str, np.ndarray]:
    """Every parameter's gradient of the mean cross-entropy (+ L2 on weights), by the formulas.

    Computed in float64 and returned in each parameter's dtype, keyed as ``named_parameters()``.
    With ``layer_outputs``, also the gradient of each layer's output, keyed by the layer's name
    (``"fc1"``, ``"relu"``, ...): the ``dz1``, ``dh`` of the notebooks.

    >>> import nn
    >>> model = nn.TwoLayerNet(2, 3, 2, seed=0)
    >>> grads = gradients(model, np.ones((4, 2)), np.array([0, 1, 1, 0]), layer_outputs=True)
    >>> grads["fc2.bias"].shape, grads["relu"].shape
    ((2,), (4, 3))
    """
    layers = chain(model)
    X = np.asarray(X.data if isinstance(X, mt.Tensor) else X, dtype=np.float64)
    values = _forward(layers, X)
    n = X.shape[0]
    target = _targets(y, n, values[-1].shape[1])
    # d loss / d logits of -sum(target * log_softmax) / n: softmax - target when each row of
    # target sums to 1 (labels, one-hot, probabilities), and in general softmax * row sum - target.
    g = (_softmax(values[-1]) * target.sum(axis=1, keepdims=True) - target) / n
    grads, outputs = {}, {}
    for (name, layer), x, out in reversed(list(zip(layers, values[:-1], values[1:]))):
        outputs[name] = g
        if isinstance(layer, Linear):
            W = layer.weight.data.astype(np.float64)
            grads[_dotted(name, "weight")] = x.T @ g + reg * W
            if layer.bias is not None:
                grads[_dotted(name, "bias")] = g.sum(axis=0)
            g = g @ W.T
        else:
            g = _ACTIVATIONS[type(layer)][1](g, x, out)
    result = {name: grads[name].astype(p.dtype) for name, p in model.named_parameters()}
    return {**result, **outputs} if layer_outputs else result


# -- three-way check -------------------------------------------------------------------------
def loss(model: Module, X: Any, y: Any, reg: float = 0.0) -> mt.Tensor:
    """The loss the formulas differentiate, on the tape: cross-entropy + L2 on Linear weights.

    >>> import nn
    >>> round(loss(nn.TwoLayerNet(2, 3, 2, seed=0), np.zeros((2, 2)), np.array([0, 1])).item(), 4)
    0.6931
    """
    weights = [layer.weight for _, layer in chain(model) if isinstance(layer, Linear)]
    return functional.cross_entropy(model(X), y) + functional.l2_penalty(weights, reg)


def _finite_differences(model: Module, X: Any, y: Any, reg: float, eps: float, entries: int | None,
                        rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({name: flat indices}, {name: d loss / d those entries}) by central differences in float64.

    Only ``entries`` random entries of each parameter are perturbed (all when None or more).
    The perturbed model is a copy: writing the caller's parameters would mark them as changed,
    and the engine would then refuse a backward through any graph the caller built before.
    """
    model = copy.deepcopy(model)
    named = dict(model.named_parameters())
    picks = {name: np.arange(p.size) if entries is None or p.size <= entries
             else np.sort(rng.choice(p.size, entries, replace=False)) for name, p in named.items()}
    bases = {name: p.data.astype(np.float64).ravel() for name, p in named.items()}

    def loss_at(*values: np.ndarray) -> mt.Tensor:
        for (name, p), value in zip(named.items(), values):
            array = bases[name].copy()
            array[picks[name]] = value
            p.data = array.reshape(p.shape)
        return loss(model, X, y, reg)

    numerical = mt.numerical_grad(loss_at, [bases[name][pick] for name, pick in picks.items()], eps)
    return picks, dict(zip(named, numerical))


def _shaped(values: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Entries of each parameter in its own shape when all of them are there, else as a vector."""
    return {name: v.reshape(shapes[name]) if v.size == np.prod(shapes[name]) else v
            for name, v in values.items()}


@dataclass(frozen=True)
class ManualRow:
    """One parameter: the largest relative error of each pair (see ``GradRow.max_rel_err``)."""

    name: str
    shape: tuple[int, ...]
    tape_vs_manual: float
    tape_vs_numerical: float
    manual_vs_numerical: float
    ok: bool
    verdict: str
    diagnosis: str


# (tape == manual, tape == numerical, manual == numerical) -> verdict and what it means
_VERDICTS = {
    (True, True, True): ("ok", ""),
    (False, True, False): ("manual wrong", None),  # None: the diagnosis of manual against the tape
    (False, False, True): ("tape wrong", "the tape disagrees with the formulas and with finite differences: "
                           "an engine bug in one of this layer's ops (run mt.gradcheck on it)"),
    (True, False, False): ("numerical off", "finite differences disagree with the tape and the formulas: a "
                           "ReLU kink within eps of a pre-activation, or too little precision (use float64)"),
    **dict.fromkeys([(True, True, False), (True, False, True), (False, True, True)], (
        "borderline", "two pairs agree and the third just misses the tolerance: the errors sit near "
                      "rtol; compare in float64, or with another eps")),
}


class ManualReport(mt.RowReport):
    """Tape against manual formulas against finite differences; truthy only when all three agree.

    The three pairwise :class:`~microtensor.GradReport` s are kept as ``tape_vs_manual``,
    ``tape_vs_numerical`` and ``manual_vs_numerical``. Rows are in backward order (the last
    layer first); ``first_wrong`` is the first parameter where anything disagrees.
    """

    row_kind = "parameter"

    def __init__(self, title: str, reports: tuple[mt.GradReport, mt.GradReport, mt.GradReport],
                 note: str) -> None:
        self.title = title
        self.tape_vs_manual, self.tape_vs_numerical, self.manual_vs_numerical = reports
        self.note = note
        self.rows = [self._row(name) for name in [r.name for r in self.tape_vs_manual.rows]]
        self.first_wrong = next((row.name for row in self.rows if not row.ok), None)

    def _row(self, name: str) -> ManualRow:
        pairs = [report[name] for report in (self.tape_vs_manual, self.tape_vs_numerical,
                                             self.manual_vs_numerical)]
        verdict, diagnosis = _VERDICTS.get(tuple(p.ok for p in pairs), ("all differ", None))
        if diagnosis is None:
            diagnosis = f"the manual gradient {pairs[0].diagnosis}"
        return ManualRow(name, pairs[0].shape, *(p.max_rel_err for p in pairs), verdict == "ok", verdict,
                         diagnosis)

    def __str__(self) -> str:
        wrong = sum(not row.ok for row in self.rows)
        summary = (f"all {len(self.rows)} parameters agree" if not wrong else
                   f"{wrong} of {len(self.rows)} parameters disagree; first wrong: {self.first_wrong}")
        header = ("parameter", "shape", "tape vs manual", "tape vs numerical", "manual vs numerical",
                  "verdict")
        cells = [(r.name, str(r.shape), *(f"{e:.1e}" if np.isfinite(e) else "-" for e in
                  (r.tape_vs_manual, r.tape_vs_numerical, r.manual_vs_numerical)), r.verdict)
                 for r in self.rows]
        lines = [f"{self.title}: {summary}", self.note, "", *format_table(header, cells)]
        notes = [f"{row.name}: {row.diagnosis}" for row in self.rows if row.diagnosis]
        return "\n".join(lines + ([""] + notes if notes else []))


def _relu_inputs_near_zero(model: Module, X: Any, eps: float) -> int:
    layers = chain(model)
    values = _forward(layers, np.asarray(X.data if isinstance(X, mt.Tensor) else X, dtype=np.float64))
    return sum(int(np.sum(np.abs(x) <= eps)) for (_, layer), x in zip(layers, values)
               if isinstance(layer, ReLU))


def _tolerances(parameters: Any, atol: float | None, rtol: float | None) -> tuple[float, float]:
    double = all(p.dtype == np.float64 for p in parameters)
    return (atol if atol is not None else 1e-8 if double else 1e-5,
            rtol if rtol is not None else 1e-5 if double else 1e-3)


def check(model: Module, X: Any, y: Any, reg: float = 0.0, *, atol: float | None = None,
          rtol: float | None = None, eps: float = 1e-6, entries: int | None = 50,
          seed: int = 0) -> ManualReport:
    """Tape against the manual formulas against finite differences, for every parameter.

    Tolerances default by the model's dtype (float64: atol 1e-8, rtol 1e-5; else atol 1e-5,
    rtol 1e-3). Finite differences perturb up to ``entries`` random entries per parameter
    (all of them when None), in float64.

    >>> import nn
    >>> model = nn.ThreeLayerNet(3, 4, 4, 2, seed=0, dtype=np.float64)
    >>> check(model, np.ones((2, 3)), np.array([0, 1]))["fc3.bias"].verdict
    'ok'
    """
    named = dict(model.named_parameters())
    atol, rtol = _tolerances(named.values(), atol, rtol)
    order = list(reversed(named))  # backward order: the last layer's bias first
    shapes = {name: p.shape for name, p in named.items()}
    tape = dict(zip(named, mt.grad(loss(model, X, y, reg), list(named.values()))))
    manual = gradients(model, X, y, reg)
    picks, numerical = _finite_differences(model, X, y, reg, eps, entries, np.random.default_rng(seed))
    at_picks = lambda grads: _shaped({name: grads[name].ravel()[picks[name]] for name in order}, shapes)
    numerical = _shaped({name: numerical[name] for name in order}, shapes)
    weights = {name: p.data for name, p in named.items() if name.endswith("weight")}
    n = len(np.asarray(X.data if isinstance(X, mt.Tensor) else X))
    compare = lambda expected, actual: mt.compare_grads(
        {k: expected[k] for k in order}, actual, atol, rtol, params=weights, batch_size=n)
    reports = (compare(tape, manual), compare(numerical, at_picks(tape)),
               compare(numerical, at_picks(manual)))
    perturbed, total = sum(map(len, picks.values())), sum(p.size for p in named.values())
    kinks = _relu_inputs_near_zero(model, X, eps)
    note = (f"{type(model).__name__}, batch of {n}, reg={reg:g}, {next(iter(named.values())).dtype}; "
            f"finite differences at {perturbed} of {total} entries (eps={eps:g}"
            f"{f'; {kinks} ReLU input(s) within eps of 0, where they are unreliable' if kinks else ''}); "
            f"each error is max |a - b| / max |b|  (atol={atol:g}, rtol={rtol:g})")
    return ManualReport("nn.manual.check", reports, note)
