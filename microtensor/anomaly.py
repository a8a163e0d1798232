"""Anomaly detection: stop at the first op whose forward or backward produces NaN or inf.

The tape calls the active detector after every forward, and backward calls the VJPs
through it; outside ``detect_anomaly`` there is no detector, and the hot path pays a
single ``is None`` test per op and per node.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ContextDecorator
from typing import Any

import numpy as np

from microtensor.autograd import Node, Op, _anomaly, _shapes
from microtensor.tensor import Tensor

_LIBRARY_PACKAGES = ("microtensor", "nn")


def _user_location() -> str:
    """``file:line`` of the innermost caller outside microtensor and nn: the user's code."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _LIBRARY_PACKAGES:
        frame = frame.f_back
    return "<unknown>" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


class AnomalyError(FloatingPointError):
    """An op produced NaN or inf inside ``detect_anomaly``."""


def _non_finite(values: Any) -> str | None:
    """'nan', 'inf' or 'nan and inf' when a floating array holds them, else None."""
    array = values._data if isinstance(values, Tensor) else np.asarray(values)
    if array.dtype.kind not in "fc" or np.isfinite(array).all():
        return None
    kinds = [word for word, present in (("nan", np.isnan(array).any()), ("inf", np.isinf(array).any()))
             if present]
    return " and ".join(kinds)


class detect_anomaly(ContextDecorator):
    """Context manager and decorator: the first op that produces NaN or inf raises
    :class:`AnomalyError` naming the op, the line of your code that ran it, and its
    input shapes. Ops run inside it also remember where they were created, for backward.
    Thread-local, like ``no_grad``.

    >>> x = Tensor([0.0, 1.0], requires_grad=True)
    >>> with detect_anomaly():  # doctest: +ELLIPSIS
    ...     y = x.log()
    Traceback (most recent call last):
    microtensor.anomaly.AnomalyError: log produced inf in its forward, at ...
    """

    def __enter__(self) -> detect_anomaly:
        _anomaly.previous.append(_anomaly.detector)  # a stack: the manager can be nested or shared
        _anomaly.detector = self
        return self

    def __exit__(self, *exc: object) -> None:
        _anomaly.detector = _anomaly.previous.pop()

    def check_forward(self, op: Op, result: Tensor, args: tuple) -> None:
        """Called by the tape after every forward: remember where, stop at NaN or inf."""
        differentiating = _anomaly.backward_of
        if differentiating:  # an op a VJP records under create_graph: part of that node's backward
            node = differentiating[-1]
            where = node.origin
        else:
            where = _user_location()
        if result._node is not None:
            result._node.origin = where  # for an anomaly its backward may find later
        found = _non_finite(result)
        if found and differentiating:
            raise AnomalyError(f"the backward of {node.op.name} produced {found} (in the {op.name} it "
                               f"computes); {_created_at(node)}")
        if found:
            raise AnomalyError(
                f"{op.name} produced {found} in its forward, at {where} (input shapes: {_shapes(args)})"
            )

    def check_backward(self, node: Node, index: int, grad: Any) -> None:
        found = _non_finite(grad)
        if found:
            raise AnomalyError(f"the backward of {node.op.name} produced {found} in the gradient of its "
                               f"input {index}; {_created_at(node)}")

    def watched_vjps(self, node: Node) -> tuple[Callable[..., Any], ...]:
        """``node``'s VJPs, each checked for NaN and inf; the ops they record (under
        ``create_graph``) are reported as part of this node's backward, not as forwards."""
        def watched(index: int, vjp: Callable[..., Any]) -> Callable[..., Any]:
            def checked(*args: Any, **params: Any) -> Any:
                _anomaly.backward_of.append(node)
                try:
                    grad = vjp(*args, **params)
                finally:
                    _anomaly.backward_of.pop()
                self.check_backward(node, index, grad)
                return grad
            return checked
        return tuple(watched(i, vjp) for i, vjp in enumerate(node.op.vjps))


def _created_at(node: Node) -> str:
    origin = node.origin or "an unknown line (the forward ran outside detect_anomaly)"
    return f"the {node.op.name} was created at {origin} (input shapes: {_shapes(node.inputs)})"
