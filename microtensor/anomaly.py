"""Anomaly detection: stop at the first op whose forward or backward produces NaN or inf.

The tape calls the active detector after every forward and every VJP; outside
``detect_anomaly`` there is no detector, and the hot path pays a single ``is None`` test.
"""

from __future__ import annotations

from contextlib import ContextDecorator
from typing import Any

import numpy as np

from microtensor.autograd import Node, Op, _anomaly, _shapes, _user_location
from microtensor.tensor import Tensor


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
        self._previous = _anomaly.detector
        _anomaly.detector = self
        return self

    def __exit__(self, *exc: object) -> None:
        _anomaly.detector = self._previous

    def _recreate_cm(self) -> detect_anomaly:
        return type(self)()  # a fresh manager per decorated call, as no_grad does

    def check_forward(self, op: Op, result: Tensor, args: tuple) -> None:
        found = _non_finite(result)
        if found:
            raise AnomalyError(
                f"{op.name} produced {found} in its forward, at {_user_location()} "
                f"(input shapes: {_shapes(args)})"
            )

    def check_backward(self, node: Node, index: int, grad: Any) -> None:
        found = _non_finite(grad)
        if found:
            origin = node.origin or "an unknown line (the forward ran outside detect_anomaly)"
            raise AnomalyError(
                f"the backward of {node.op.name} produced {found} in the gradient of its "
                f"input {index}; the {node.op.name} was created at {origin} "
                f"(input shapes: {_shapes(node.inputs)})"
            )
