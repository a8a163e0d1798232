"""The tape: how ops are recorded as they run and replayed in reverse by backward.

Nothing here knows about a particular op. An :class:`Op` is a name, a forward
function on NumPy arrays and one vector-Jacobian product per input; :func:`Op.__call__`
runs the forward and, when gradients are wanted, appends a :class:`Node` to the tape.
:func:`run_backward` walks the recorded nodes from the output back to the leaves.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ContextDecorator, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from microtensor.reductions import shared_ones, sum_first_axis


class _GradMode(threading.local):
    def __init__(self) -> None:  # runs once in each thread that uses it
        self.enabled = True
        self.previous: list[bool] = []  # a stack, so one manager object can be nested or shared


_grad_mode = _GradMode()
_tape_position = itertools.count()


class _SetGradMode(ContextDecorator):
    _enabled: bool

    def __new__(cls, function: Callable[..., Any] | None = None) -> Any:
        # `@no_grad` without parentheses decorates too, as in PyTorch.
        manager = super().__new__(cls)
        return manager if function is None else manager(function)

    def __enter__(self) -> None:
        _grad_mode.previous.append(_grad_mode.enabled)
        _grad_mode.enabled = self._enabled

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = _grad_mode.previous.pop()


class no_grad(_SetGradMode):
    """Context manager and decorator: ops inside record nothing (in this thread only).

    >>> with no_grad():
    ...     y = Tensor([1.0], requires_grad=True) * 2
    >>> y.requires_grad
    False
    """

    _enabled = False


class enable_grad(_SetGradMode):
    """Context manager and decorator: recording is on again inside a ``no_grad`` block.

    >>> with no_grad(), enable_grad():
    ...     y = Tensor([1.0], requires_grad=True) * 2
    >>> y.requires_grad
    True
    """

    _enabled = True


class _Scopes(threading.local):
    def __init__(self) -> None:  # runs once in each thread that uses it
        self.current: tuple[str, ...] = ()
        self.previous: list[tuple[str, ...]] = []  # what each open ``with scope`` replaced


_scopes = _Scopes()


class scope:
    """Context manager: ops recorded inside are tagged with ``name`` (nested scopes stack).

    ``nn`` modules open one per call, so a picture can group a layer's ops together.
    ``scope.state.current`` is the tuple of names ops are recorded under in this thread;
    code that enters a scope on every call may set it and restore it in a ``try/finally``
    instead, which costs a fraction of a ``with`` block (``nn.Module.__call__`` does).

    >>> x = Tensor([1.0], requires_grad=True)
    >>> with scope("layer"):
    ...     y = x * 2
    >>> y._node.scope, scope.state.current
    (('layer',), ())
    """

    __slots__ = ("name",)
    state = _scopes

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> scope:
        state = _scopes
        current = state.current
        state.previous.append(current)
        state.current = current + (self.name,)
        return self

    def __exit__(self, *exc: object) -> None:
        _scopes.current = _scopes.previous.pop()


def is_grad_enabled() -> bool:
    """Whether ops in this thread are being recorded."""
    return _grad_mode.enabled


class Node:
    """One recorded op application: what backward needs to send gradients to the inputs."""

    __slots__ = ("op", "inputs", "arrays", "params", "saved", "position", "freed", "scope", "origin")

    def __init__(self, op: Op, inputs: tuple, arrays: list, params: dict, saved: Any) -> None:
        self.op = op
        self.inputs = inputs  # Tensors, or raw constants (Python scalars, ndarrays)
        self.arrays = arrays  # the inputs' arrays, as the first-order VJPs take them
        self.params = params  # non-differentiable arguments such as axis
        self.saved = saved  # what a ``saves=True`` op's forward kept for its VJPs
        self.position = next(_tape_position)  # execution order; also a topological order
        self.freed = False
        self.scope = _scopes.current  # e.g. ("TwoLayerNet", "fc1"), for grouping in pictures
        self.origin: str | None = None  # where the user's code ran it; set by detect_anomaly

    def first_order_params(self) -> dict:
        """The keywords of this node's first-order VJPs: its params, and what its op saved."""
        return self.params if self.saved is None else {**self.params, "saved": self.saved}


def _shapes(values: Iterable[Any]) -> str:
    return ", ".join(str(np.shape(v._data if isinstance(v, Tensor) else v)) for v in values)


_SEQUENCES = (list, tuple)


def _forward_error(op: Op, err: Exception, args: tuple) -> Exception:
    """The error of a failed forward, worded once for every op: the op, why, the inputs."""
    arrays = [a._data if isinstance(a, Tensor) else a for a in args]
    dtypes = ", ".join(str(a.dtype) if isinstance(a, np.ndarray) else type(a).__name__ for a in arrays)
    try:
        # explain words shape problems; other errors (a missing argument, a string) keep theirs.
        reason = isinstance(err, ValueError) and op.explain and op.explain(*arrays) or str(err)
        inputs = f"input shapes: {_shapes(args)}; dtypes: {dtypes}"
    except (ValueError, TypeError, IndexError):  # an input NumPy cannot give a shape to, say
        reason, inputs = str(err), f"dtypes: {dtypes}"
    message = f"{op.name}: {reason} ({inputs})"
    try:
        return type(err)(message)
    except TypeError:  # some of NumPy's exception classes cannot be made from a message alone
        return next(kind for kind in (IndexError, ValueError, TypeError) if isinstance(err, kind))(message)


def _inputs_without_vjps(forward: Callable[..., Any]) -> int:
    """How many inputs an op without VJPs (a comparison, say) takes: as many as its ufunc, or
    the forward's leading arguments without a default (``lambda x, axis=None`` takes one)."""
    if isinstance(forward, np.ufunc):
        return forward.nin
    count = 0
    for argument in inspect.signature(forward).parameters.values():
        if argument.kind is not argument.POSITIONAL_OR_KEYWORD or argument.default is not argument.empty:
            break
        count += 1
    return count


def _param_names(forward: Callable[..., Any], inputs: int) -> tuple[str, ...]:
    """The names of ``forward``'s arguments after its ``inputs``: its parameters, such as axis.

    NumPy's ufuncs (the forwards of add, greater, ...) take no parameters of ours.
    """
    if isinstance(forward, np.ufunc):
        return ()
    arguments = list(inspect.signature(forward).parameters.values())[inputs:]
    return tuple(a.name for a in arguments if a.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Op:
    """A differentiable operation: a forward on arrays, and one VJP per input.

    Each VJP is called as ``vjp(g, out, *inputs, **params)`` and returns the gradient
    for its input. Arguments are ndarrays on the first-order path and Tensors under
    ``create_graph=True``, so a VJP is written with operators and methods that both
    share. Gradients are summed back to each input's shape by the tape, not the VJP.
    ``g`` may be shared with other VJPs and read-only: a VJP returns a new array (or a
    view), never writes into ``g``.

    An op whose derivative needs a value its forward computed anyway (the softmax inside
    a cross-entropy, say) is made with ``saves=True``: its forward returns
    ``(out, saved)``, and on the first-order path its VJPs get ``saved=`` as a keyword.
    Under ``create_graph`` they get no ``saved`` and recompute, so the value is differentiated.

    ``explain``, when given, runs only after the forward failed: called with the same
    arguments, it says in plain words why they do not fit (which axes of two shapes
    disagree, say), or returns None to keep NumPy's message.

    >>> double = Op("double", lambda x: 2 * x, lambda g, out, x: 2 * g)
    >>> double(Tensor([1.0, 2.0])).data
    array([2., 4.])
    """

    __slots__ = ("name", "forward", "vjps", "arity", "differentiable", "saves", "explain", "param_names")

    def __init__(self, name: str, forward: Callable[..., Any], *vjps: Callable[..., Any],
                 saves: bool = False, explain: Callable[..., str | None] | None = None):
        self.name = name
        self.forward = forward
        self.vjps = vjps
        # How many inputs: the arguments after them are parameters.
        self.arity = len(vjps) if vjps else _inputs_without_vjps(forward)
        self.differentiable = bool(vjps)
        self.saves = saves
        self.explain = explain
        self.param_names = _param_names(forward, self.arity)

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def _bind(self, args: tuple, params: dict) -> tuple[tuple, dict]:
        """Positional arguments past the inputs are parameters: ``mt.sum(x, 0)`` is ``axis=0``."""
        inputs, extra = args[:self.arity], args[self.arity:]
        twice = set(self.param_names[:len(extra)]) & set(params)
        # A ufunc forward would take a stray argument as its out= (or where=), and write into it.
        stray = bool(params) and isinstance(self.forward, np.ufunc)
        if len(extra) > len(self.param_names) or twice or stray:
            takes = f"the parameters {', '.join(self.param_names)}" if self.param_names else "no parameters"
            keywords = f"the keywords {', '.join(params)}" if params else "no keywords"
            raise TypeError(f"{self.name}: takes {self.arity} input(s) and {takes}; got {len(args)} "
                            f"positional argument(s) and {keywords}")
        return inputs, {**dict(zip(self.param_names, extra)), **params}

    def __call__(self, *args: Any, **params: Any) -> Tensor:
        if len(args) > self.arity or params and not self.param_names:
            args, params = self._bind(args, params)
        arrays = []
        records = False
        try:
            for a in args:
                if isinstance(a, Tensor):
                    arrays.append(a._data)
                    records = records or a.requires_grad
                else:  # lists become arrays here, once, so that VJPs can do arithmetic on them
                    arrays.append(np.asarray(a) if type(a) in _SEQUENCES else a)
            out = self.forward(*arrays, **params) if params else self.forward(*arrays)
        except (ValueError, TypeError, IndexError) as err:
            raise _forward_error(self, err, args) from None
        saved = None
        if self.saves:
            out, saved = out
        if type(out) is not np.ndarray:
            out = np.asarray(out)
        result = Tensor.__new__(Tensor)
        result._data = out
        result.grad = None
        result.name = None
        result._retains_grad = False
        result._modified_at = -1
        if records and self.differentiable and _grad_mode.enabled:
            result.requires_grad = True
            result._node = Node(self, args, arrays, params, saved)
        else:
            result.requires_grad = False
            result._node = None
        if _anomaly.detector is not None:
            _anomaly.detector.check_forward(self, result, args)
        return result

    def either(self, *args: Any, **params: Any) -> Any:
        """Apply to ndarrays (giving an ndarray) or to Tensors (recording); used in VJPs."""
        for a in args:
            if isinstance(a, Tensor):
                return self(*args, **params)
        out = self.forward(*args, **params)
        return out[0] if self.saves else out


class _Anomaly(threading.local):
    # Where ``detect_anomaly`` plugs in; None outside it, so the hot path pays one test.
    def __init__(self) -> None:
        self.detector: Any = None
        self.previous: list[Any] = []
        self.backward_of: list[Node] = []  # the nodes whose VJPs are running, innermost last


_anomaly = _Anomaly()

_latest_change = -1  # the tape position of the latest in-place change to any tensor


def change_position() -> int:
    """The tape position of an in-place change made now: later than every op recorded so far.

    Backward looks for changed tensors only around ops recorded before the latest change,
    so a training loop (which changes its weights before the forward) never pays for it.
    """
    global _latest_change
    _latest_change = next(_tape_position)
    return _latest_change


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` over the axes NumPy broadcasting added, so it has ``shape``.

    >>> unbroadcast(np.ones((4, 3)), (3,))
    array([4., 4., 4.])
    """
    if grad.shape == shape:
        return grad
    leading = grad.ndim - len(shape)
    if leading < 0:
        raise ValueError(f"gradient of shape {grad.shape} cannot reduce to shape {shape}")
    if leading == 1:
        grad = sum_first_axis(grad)
    elif leading:
        grad = grad.sum(axis=tuple(range(leading)))
    if 1 not in shape or grad.shape == shape:
        return grad
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True)


def _freed_graph_error() -> RuntimeError:
    return RuntimeError(
        "Trying to backward through the graph a second time: its saved values were "
        "released by the first backward. Specify retain_graph=True on the first "
        "backward() (or grad()) call if you need to backward through it again."
    )


def expect_tensor(value: Any, where: str) -> None:
    """Refuse, in ``where``'s words, an output that is not a Tensor (an ndarray, say)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}: the output must be a Tensor (the result of ops on tensors), "
                        f"got {type(value).__name__}")


def recorded_nodes(outputs: Sequence[Tensor]) -> list[Tensor]:
    """Every non-leaf tensor that ``outputs`` depend on, latest first (reverse tape order).

    Iterative, so arbitrarily long chains do not hit the recursion limit.
    """
    seen: set[Node] = set()
    found: list[tuple[int, Tensor]] = []
    stack = [t for t in outputs if t._node is not None]
    while stack:
        t = stack.pop()
        node = t._node
        if node in seen:
            continue
        seen.add(node)
        found.append((node.position, t))
        for a in node.inputs:
            if isinstance(a, Tensor) and a._node is not None and a._node not in seen:
                stack.append(a)
    found.sort(reverse=True)  # positions are unique, so tensors are never compared
    return [t for _, t in found]


def _root_gradient(output: Tensor, gradient: Any, create_graph: bool) -> Any:
    data = output._data
    if data.dtype.kind != "f":
        raise TypeError(f"backward: the output has dtype {output.dtype}, but gradients need a "
                        f"floating-point output; a complex or object value entered the computation")
    if gradient is None:  # the usual loss.backward()
        if data.size != 1:
            raise ValueError(
                f"backward: grad can be implicitly created only for scalar outputs, but the "
                f"output has shape {output.shape}; pass gradient= with that shape "
                f"(or reduce the output first, e.g. .sum() or .mean())"
            )
        gradient = shared_ones(data.shape, data.dtype)  # read-only: VJPs never write to g
    elif isinstance(gradient, Tensor) and create_graph:
        pass
    else:
        array = np.asarray(gradient._data if isinstance(gradient, Tensor) else gradient)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"backward: gradient must hold real numbers, got dtype {array.dtype}")
        gradient = array.astype(output.dtype, copy=False)
    if gradient.shape != output.shape:
        raise ValueError(
            f"backward: gradient has shape {gradient.shape} but the output has shape "
            f"{output.shape}; they must match"
        )
    if create_graph and not isinstance(gradient, Tensor):
        gradient = Tensor(np.array(gradient))  # a copy: the graph must not share the caller's array
    return gradient


@contextmanager
def _recording(context: Any) -> Iterator[None]:
    """``context``, with grad mode on: VJPs record only when handed Tensors, so backward needs
    grad mode only under create_graph (and a second context manager would cost the common
    first-order pass a microsecond)."""
    with enable_grad(), context:
        yield


def run_backward(
    outputs: Sequence[Tensor],
    gradients: Sequence[Any],
    retain_graph: bool | None = None,
    create_graph: bool = False,
    inputs: Sequence[Tensor] | None = None,
) -> list[Any] | None:
    """Replay the tape from ``outputs`` back to the leaves.

    Without ``inputs``, leaf gradients are accumulated into ``.grad`` (and into the
    ``.grad`` of tensors that called ``retain_grad()``). With ``inputs``, their
    gradients are returned instead and no ``.grad`` is touched.
    """
    if retain_graph is None:
        retain_graph = create_graph
    for out in outputs:
        if not out.requires_grad:
            raise RuntimeError(
                "backward: the output does not require grad and has no recorded graph; "
                "did you create it under no_grad(), or from tensors without requires_grad=True?"
            )
    grads: dict[int, Any] = {}  # id(tensor) -> its gradient so far
    leaves: dict[int, Tensor] = {}
    # Recorded tensors that have a gradient and wait for their op's VJPs, latest op first.
    # Tape positions are a topological order, so a tensor leaves this heap only after
    # every op that consumed it has sent its share of the gradient.
    pending: list[tuple[int, Tensor]] = []
    for out, gradient in zip(outputs, gradients):
        root = _root_gradient(out, gradient, create_graph)
        key = id(out)
        if key in grads:  # the same output twice
            grads[key] = grads[key] + root
        elif out._node is None:  # backward on a leaf: its gradient is (a copy of) the root gradient
            leaves[key] = out
            grads[key] = root * 1 if create_graph else np.array(root)
        else:
            grads[key] = root
            heapq.heappush(pending, (-out._node.position, out))
    wanted = None if inputs is None else {id(t) for t in inputs}
    captured: dict[int, Any] = {}
    detector = _anomaly.detector
    latest_change = _latest_change
    # A leaf's gradient must never be, or share memory with, another tensor's; only .grad needs
    # a copy (grad() hands back what it captured, and create_graph makes new Tensors anyway).
    copy_shared = wanted is None and not create_graph
    pop, push = heapq.heappop, heapq.heappush
    # inf and nan in gradients are the user's to see (or detect_anomaly's), not warnings.
    quiet = np.errstate(all="ignore")
    with _recording(quiet) if create_graph else quiet:
        while pending:
            position, t = pop(pending)
            position = -position
            node = t._node
            if node.freed:
                raise _freed_graph_error()
            g = grads.pop(id(t))
            if wanted is not None:
                if id(t) in wanted:
                    captured[id(t)] = g
            elif t._retains_grad:
                t.grad = _add_into(t.grad, _as_gradient(g, t, create_graph), t)
            if position < latest_change:
                _check_unchanged(node, t, position)
            # Every VJP of the node takes the same arguments, so they are gathered once.
            if create_graph:  # Tensors, and the constants as the forward saw them (lists as arrays)
                args = (g, t, *[a if isinstance(a, Tensor) else array
                                for a, array in zip(node.inputs, node.arrays)])
                params = node.params
            else:
                args, params = (g, t._data, *node.arrays), node.first_order_params()
            vjps = node.op.vjps if detector is None else detector.watched_vjps(node)
            for i, a in enumerate(node.inputs):
                if not isinstance(a, Tensor) or not a.requires_grad:
                    continue
                ga = vjps[i](*args, **params) if params else vjps[i](*args)
                shape = a._data.shape
                if ga.shape != shape:
                    ga = _summed_to_input(ga, shape, node, i)
                key = id(a)
                previous = grads.get(key)
                if previous is not None:
                    grads[key] = previous + ga
                elif a._node is not None:
                    grads[key] = ga
                    push(pending, (-a._node.position, a))
                else:
                    leaves[key] = a
                    if copy_shared and (ga is g or ga.base is not None):
                        ga = ga.copy()
                    elif create_graph and (ga is g or _shares_memory(ga)):
                        ga = ga * 1  # a new Tensor, still differentiable
                    grads[key] = ga
            if not retain_graph:
                node.freed = True
                node.saved = None
    if wanted is not None:
        for key in wanted:
            if key in grads:  # a leaf, or a tensor no recorded op consumed
                captured.setdefault(key, grads[key])
        return [_as_gradient(captured.get(id(t)), t, create_graph) for t in inputs]
    for key, leaf in leaves.items():
        leaf.grad = _add_into(leaf.grad, grads[key], leaf)
    return None


def _summed_to_input(grad: Any, shape: tuple[int, ...], node: Node, i: int) -> Any:
    """A VJP's gradient summed over the axes broadcasting added to input ``i``, checked."""
    grad = unbroadcast(grad, shape)
    if grad.shape != shape:
        raise ValueError(f"backward: the derivative of {node.op.name} gave input {i} a gradient of "
                         f"shape {grad.shape}, but the input has shape {shape}; the op's VJP is wrong")
    return grad


def _check_unchanged(node: Node, output: Tensor, position: int) -> None:
    """Refuse to differentiate an op whose output or inputs changed in place after it ran."""
    if output._modified_at > position:
        raise _modified_error(node, output, "its output")
    for i, a in enumerate(node.inputs):
        if isinstance(a, Tensor) and a._modified_at > position:
            raise _modified_error(node, a, f"input {i}")


def _modified_error(node: Node, tensor: Tensor, role: str) -> RuntimeError:
    label = f"{tensor.name!r} " if tensor.name else ""
    return RuntimeError(
        f"backward: {label}(shape {tensor.shape}), {role} of {node.op.name} (tape position "
        f"{node.position}), was modified in place after the op used it, so its gradient "
        f"would be wrong. Change tensors after backward (e.g. optimizer.step() after "
        f"loss.backward()), or run the forward again after changing them."
    )


def _as_gradient(grad: Any, t: Tensor, create_graph: bool) -> Any:
    """A gradient as handed to the user: the tensor's dtype, never aliasing another."""
    if grad is None:
        return None
    if isinstance(grad, Tensor):
        return grad if grad.dtype == t.dtype else grad.astype(t.dtype)
    if create_graph:
        return Tensor(np.array(grad, dtype=t.dtype))
    return np.array(grad, dtype=t.dtype)  # a copy: VJPs may return shared or read-only views


def _shares_memory(grad: Any) -> bool:
    """Whether a gradient (an array, or a Tensor under create_graph) is a view of another array."""
    return (grad._data if isinstance(grad, Tensor) else grad).base is not None


def _add_into(current: Any, grad: Any, t: Tensor) -> Any:
    """``current + grad`` in ``t``'s dtype, as an array (a Tensor under create_graph);
    ``grad`` is the caller's to hand over."""
    if grad.dtype != t._data.dtype:
        # requires_grad set on an integer tensor after it was made: the constructor refuses that.
        _check_differentiable_dtype(t._data.dtype, "backward")
        grad = grad.astype(t._data.dtype)
    total = grad if current is None else current + grad
    if type(total) is not np.ndarray and not isinstance(total, Tensor):  # NumPy's 0-d results are scalars
        total = np.asarray(total)
    return total


@dataclass(frozen=True)
class TapeEntry:
    """One line of a tape: ``output = op(inputs)`` with the output's shape and dtype."""

    position: int
    op: str
    inputs: tuple[str, ...]
    output: str
    shape: tuple[int, ...]
    dtype: str
    params: str

    def __str__(self) -> str:
        args = ", ".join(self.inputs) + (f", {self.params}" if self.params else "")
        return f"{self.output} = {self.op}({args})  # {self.shape} {self.dtype}"


class Tape(list):
    """The recorded operations an output depends on, in the order they ran."""

    def __str__(self) -> str:
        return "\n".join(str(entry) for entry in self)


def describe_constant(value: Any) -> str:
    """A short label for a non-tensor argument: ``array(3, 4)`` for arrays, tuples element-wise.

    >>> describe_constant((np.arange(3), 2))
    '(array(3,), 2)'
    """
    if isinstance(value, tuple):
        return "(" + ", ".join(describe_constant(v) for v in value) + ")"
    if isinstance(value, np.ndarray):
        return f"array{value.shape}" if value.size != 1 else repr(value.item())
    return repr(value)


def describe_params(params: dict[str, Any]) -> str:
    """An op's non-differentiable arguments as ``k=v``; unset (None) and off (False) ones are left out.

    >>> describe_params({"axis": -1, "keepdims": False})
    'axis=-1'
    """
    return ", ".join(f"{k}={describe_constant(v)}" for k, v in params.items()
                     if v is not None and v is not False)


def tape(output: Tensor) -> Tape:
    """The recorded ops ``output`` depends on, in execution order, as a Wengert list.

    >>> x = Tensor([1.0, 2.0], requires_grad=True, name="x")
    >>> print(tape((x * x).sum()))
    v0 = mul(x, x)  # (2,) float64
    v1 = sum(v0)  # () float64
    """
    expect_tensor(output, "tape")
    nodes = list(reversed(recorded_nodes([output])))
    labels: dict[int, str] = {}
    leaf_count = itertools.count()
    entries = Tape()
    for i, t in enumerate(nodes):
        labels[id(t)] = t.name or f"v{i}"
    for i, t in enumerate(nodes):
        names = []
        for a in t._node.inputs:
            if not isinstance(a, Tensor):
                names.append(describe_constant(a))
            elif id(a) in labels:
                names.append(labels[id(a)])
            else:
                labels[id(a)] = a.name or f"leaf{next(leaf_count)}"
                names.append(labels[id(a)])
        entries.append(TapeEntry(i, t._node.op.name, tuple(names), labels[id(t)], t.shape,
                                 str(t.dtype), describe_params(t._node.params)))
    return entries


def _listed(values: Any) -> list[Any]:
    """One Tensor (or a stray value, for the error to name) as a list; any other iterable listed."""
    single = isinstance(values, (Tensor, np.ndarray)) or not isinstance(values, Iterable)
    return [values] if single else list(values)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Any = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> tuple[Any, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, leaving every ``.grad`` alone.

    Returns one gradient per input (an ndarray, or a Tensor when ``create_graph``);
    None for an input the outputs do not depend on.

    >>> x = Tensor([1.0, 2.0], requires_grad=True)
    >>> grad((x ** 3).sum(), x)
    (array([ 3., 12.]),)
    """
    outputs, inputs = _listed(outputs), _listed(inputs)
    for output in outputs:
        expect_tensor(output, "grad")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif not isinstance(grad_outputs, (list, tuple)):  # one gradient: a Tensor, array or number
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(
            f"grad: got {len(grad_outputs)} grad_outputs for {len(outputs)} outputs"
        )
    for t in inputs:
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise ValueError("grad: every input must be a Tensor with requires_grad=True")
    return tuple(run_backward(outputs, grad_outputs, retain_graph, create_graph, inputs))


# Tensor's methods call back into this module, so it is bound last (see tensor.py).
from microtensor.tensor import Tensor, _check_differentiable_dtype  # noqa: E402
