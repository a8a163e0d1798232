"""microtensor: a small reverse-mode autograd engine over NumPy that checks your backprop.

>>> import microtensor as mt
>>> w = mt.Tensor([2.0, -1.0], requires_grad=True, name="w")
>>> (w * w).sum().backward(); w.grad
array([ 4., -2.])
"""

from microtensor.anomaly import AnomalyError, detect_anomaly
from microtensor.autograd import (
    Op,
    Tape,
    enable_grad,
    grad,
    is_grad_enabled,
    no_grad,
    scope,
    tape,
)
from microtensor.check import GradReport, RowReport, check_manual, compare_grads, gradcheck, numerical_grad
from microtensor.graph import draw_graph, render_graph, to_dot
from microtensor.ops import (
    add,
    div,
    exp,
    linear,
    log,
    log_softmax,
    matmul,
    max,
    mean,
    mul,
    neg,
    pow,
    relu,
    reshape,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    sub,
    sum,
    tanh,
    transpose,
)
from microtensor.tensor import Tensor

__all__ = [
    "Tensor", "Op", "Tape", "grad", "tape", "no_grad", "enable_grad", "is_grad_enabled", "scope",
    "detect_anomaly", "AnomalyError",
    "add", "sub", "mul", "div", "pow", "neg", "matmul", "relu", "sigmoid", "tanh", "exp", "log", "linear",
    "log_softmax", "softmax", "softmax_cross_entropy", "sum", "mean", "max", "reshape", "transpose",
    "numerical_grad", "gradcheck", "compare_grads", "check_manual", "GradReport", "RowReport",
    "to_dot", "draw_graph", "render_graph",
]
__version__ = "0.1.0"
