"""Optimizers (SGD, Adam) and learning-rate schedules (StepLR, ExponentialLR), as in ``torch.optim``.

Optimizers update each parameter's array in place, so the Parameter objects a model
holds (and anything else referring to them) stay the same objects.

>>> import numpy as np
>>> import microtensor as mt
>>> w = mt.Tensor([1.0, -2.0], requires_grad=True)
>>> opt = SGD([w], lr=0.1)
>>> (w * w).sum().backward(); opt.step(); w.data
array([ 0.8, -1.6])
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import microtensor as mt
from nn.arguments import check_positive_int
from nn.module import clear_grads


def _check_at_least(where: str, name: str, value: float, low: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if not value >= low:  # also rejects nan
        raise ValueError(f"{where}: invalid {name} {value!r}; it must be >= {low}")


State = dict[str, Any]  # per-parameter buffers: momentum, Adam's moments, a scratch array
Group = dict[str, Any]  # "params" and the settings that apply to them: lr, momentum, ...


def _work_buffer(state: State, param: np.ndarray) -> np.ndarray:
    """A scratch array kept with the parameter's state, so a step allocates nothing."""
    work = state.get("work")
    if work is None:
        work = state["work"] = np.empty_like(param)
    return work


# OpenBLAS runs an axpy of more than 10,000 elements on its threads. SciPy's OpenBLAS is not
# NumPy's, so those threads then spin against NumPy's own in the next product (W3 ran 16x
# slower with two threads); chunks of this size keep each axpy on the calling thread.
_AXPY_CHUNK = 8192


@functools.cache
def _axpy(dtype_char: str) -> Callable[..., np.ndarray] | None:
    """BLAS's ``axpy`` (``y += a * x`` in place, in one pass) for float64 and float32, else None."""
    name = {"d": "daxpy", "f": "saxpy"}.get(dtype_char)
    if name is None:
        return None
    from scipy.linalg import blas  # imported at the first step, so that importing nn stays quick

    return getattr(blas, name)


def _subtract_scaled(param: np.ndarray, step: np.ndarray, scale: float) -> None:
    """``param -= scale * step`` in place.

    BLAS's ``axpy`` when both are float32 or float64 and ``param`` is contiguous: a single
    pass over the arrays, two to three times as fast as NumPy's ``scale * step`` followed by
    the subtraction, which is what other layouts and dtypes get.

    >>> p = np.ones(2); _subtract_scaled(p, np.full(2, 2.0), 0.25); p
    array([0.5, 0.5])
    """
    # BLAS skips the whole update when scale is 0, where IEEE (and PyTorch) make 0 * inf nan.
    axpy = _axpy(param.dtype.char) if scale and step.dtype == param.dtype else None
    layout = param.flags
    if axpy is not None and not layout.c_contiguous and layout.f_contiguous:
        param, step = param.T, step.T  # the same update, on views in C order
        layout = param.flags
    if axpy is None or not layout.c_contiguous:
        with np.errstate(all="ignore"):  # quiet about inf and nan, as BLAS and backward are
            param -= np.multiply(step, scale)
        return
    x, y = step.ravel(), param.ravel()  # y is a view; x is one too unless step has another layout
    size = y.size
    if 0 < size <= _AXPY_CHUNK:  # the usual small layer: one call (BLAS refuses empty arrays)
        axpy(x, y, size, -scale)  # n, a: positional, as f2py parses keywords by name on every call
        return
    for start in range(0, size, _AXPY_CHUNK):
        axpy(x, y, min(_AXPY_CHUNK, size - start), -scale, start, 1, start, 1)  # n, a, offsets, steps


def _checked_gradient(where: str, param: mt.Tensor) -> np.ndarray:
    """``param.grad`` as an array (a Tensor's, after ``backward(create_graph=True)``), checked,
    and ``param.data`` checked to be writable."""
    if not param.data.flags.writeable:
        raise ValueError(f"{where}.step: a parameter of shape {param.shape} holds a read-only array (such "
                         f"as np.load(mmap_mode='r') or np.frombuffer give), which a step cannot update "
                         f"in place; give it a writable copy first: p.data = p.data.copy()")
    grad = param.grad.data if isinstance(param.grad, mt.Tensor) else param.grad
    if not isinstance(grad, np.ndarray) or grad.shape != param.shape:
        got = f"shape {grad.shape}" if isinstance(grad, np.ndarray) else f"a {type(grad).__name__}"
        raise ValueError(f"{where}.step: a parameter of shape {param.shape} has a .grad of {got}; a "
                         f"gradient must be an array of its parameter's shape (was .grad set by hand?)")
    return grad


class Optimizer:
    """Base class: holds parameter groups (dicts with ``"params"`` and settings) and state.

    ``params`` is an iterable of Tensors that require grad, or of dicts each with
    ``"params"`` and any settings that differ from the defaults, as in PyTorch.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        where = type(self).__name__
        if isinstance(params, mt.Tensor) or not isinstance(params, Iterable):
            raise TypeError(f"{where}: params must be an iterable of Tensors such as model.parameters() "
                            f"or [w, b], got a {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{where}: got an empty parameter list; pass e.g. model.parameters()")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        if any(isinstance(p, dict) for p in params) and not all(isinstance(p, dict) for p in params):
            raise TypeError(f"{where}: params mixes parameter groups (dicts) and tensors; put the "
                            f"tensors in a group of their own, {{'params': [...]}}")
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = [self._group(g, where) for g in groups]
        every = [p for group in self.param_groups for p in group["params"]]
        if len({id(p) for p in every}) != len(every):
            raise ValueError(f"{where}: a parameter appears more than once, so a step would update it twice")
        self.state: dict[mt.Tensor, dict[str, Any]] = {}

    def _group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        if "params" not in group:
            raise ValueError(f"{where}: a parameter group must have a 'params' entry, got keys {list(group)}")
        params = group["params"]
        # A lone Tensor is one parameter, as in PyTorch; list() would iterate over its rows.
        params = [params] if isinstance(params, mt.Tensor) else list(params)
        group = {**self.defaults, **group, "params": params}
        self._check_settings(group)
        for p in group["params"]:
            if not isinstance(p, mt.Tensor) or not p.requires_grad:
                got = "a Tensor with requires_grad=False" if isinstance(p, mt.Tensor) else type(p).__name__
                raise TypeError(f"{where}: every parameter must be a Tensor with requires_grad=True, "
                                f"got {got}")
            if not p.is_leaf:  # its .grad stays None, so a step would silently skip it
                raise ValueError(f"{where}: cannot optimize a non-leaf tensor (the result of "
                                 f"{mt.tape(p)[-1].op}); pass the tensors you created")
        return group

    def _check_settings(self, group: dict[str, Any]) -> None:
        _check_at_least(type(self).__name__, "learning rate lr", group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (``.grad`` becomes None), or with ``set_to_none=False``
        zero each gradient array in place, as in PyTorch."""
        for group in self.param_groups:  # (a call per group, not a generator: this runs every step)
            clear_grads(group["params"], set_to_none)

    def step(self) -> None:
        """Update every parameter that has a gradient, in place.

        Every gradient is checked first, so a step that fails changes no parameter.
        """
        updates = []
        for group in self.param_groups:
            for p in group["params"]:
                grad, data = p.grad, p.data
                if grad is None:
                    continue
                # Checked here, before any update, so that a step that fails changes nothing. The
                # writeable flag is checked on every step, not once at construction, because .data
                # can be replaced at any time; BLAS's axpy would write into read-only memory.
                if (type(grad) is not np.ndarray or grad.shape != data.shape
                        or not data.flags.writeable):  # the usual case skips the call
                    grad = _checked_gradient(type(self).__name__, p)
                updates.append((p, data, grad, group))
        update = self._update
        for p, data, grad, group in updates:
            update(p, data, grad, group)
            # Assigning the updated array back marks it changed, so backward through a
            # graph recorded before this step refuses to run, as in PyTorch.
            p.data = data

    def _update(self, p: mt.Tensor, param: np.ndarray, grad: np.ndarray, group: Group) -> None:
        """Update ``param``, the array of ``p``, in place; ``p``'s buffers live in ``self.state[p]``."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    Exactly ``torch.optim.SGD``: ``g = grad + weight_decay * p``; with momentum,
    ``buf = g`` at the first step, then ``buf = momentum * buf + (1 - dampening) * g``,
    and the step is ``buf`` (or ``g + momentum * buf`` with Nesterov); ``p -= lr * step``.

    >>> w = mt.Tensor([1.0], requires_grad=True)
    >>> opt = SGD([w], lr=0.5, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.zero_grad(); (w * 1.0).sum().backward(); opt.step()
    >>> w.data  # 1 - 0.5 * 1 - 0.5 * (0.9 + 1)
    array([-0.45])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_settings(self, group: dict[str, Any]) -> None:
        super()._check_settings(group)
        _check_at_least("SGD", "momentum", group["momentum"])
        _check_at_least("SGD", "weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")

    def _update(self, p: mt.Tensor, param: np.ndarray, grad: np.ndarray, group: Group) -> None:
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        if not (momentum or weight_decay):  # plain SGD keeps no state: looking it up costs 1% of a small step
            _subtract_scaled(param, grad, group["lr"])
            return
        state = self.state.setdefault(p, {})
        if weight_decay:
            work = _work_buffer(state, param)
            np.multiply(param, weight_decay, out=work)
            grad = np.add(work, grad, out=work)
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad if group["dampening"] else grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        _subtract_scaled(param, grad, group["lr"])


class Adam(Optimizer):
    """Adam (Kingma & Ba), exactly ``torch.optim.Adam``, including L2 ``weight_decay`` and amsgrad.

    ``g = grad + weight_decay * p``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    >>> w = mt.Tensor([1.0, -1.0], requires_grad=True)
    >>> opt = Adam([w], lr=0.1)
    >>> (w * 3.0).sum().backward(); opt.step(); w.data  # the first step moves each entry by ~lr
    array([ 0.9, -1.1])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_settings(self, group: dict[str, Any]) -> None:
        super()._check_settings(group)
        _check_at_least("Adam", "eps", group["eps"])
        _check_at_least("Adam", "weight_decay", group["weight_decay"])
        if len(group["betas"]) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {group['betas']!r}")
        for beta in group["betas"]:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Adam: invalid beta {beta!r}; betas must be in [0, 1)")

    def _update(self, p: mt.Tensor, param: np.ndarray, grad: np.ndarray, group: Group) -> None:
        state = self.state.setdefault(p, {})
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(param), exp_avg_sq=np.zeros_like(param))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        m, v, work = state["exp_avg"], state["exp_avg_sq"], _work_buffer(state, param)
        m *= beta1
        np.multiply(grad, 1 - beta1, out=work)
        m += work
        v *= beta2
        np.multiply(grad, grad, out=work)
        work *= 1 - beta2
        v += work
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        np.sqrt(v, out=work)
        work /= math.sqrt(1 - beta2 ** state["step"])
        work += group["eps"]
        np.divide(m, work, out=work)
        work *= group["lr"] / (1 - beta1 ** state["step"])
        param -= work


class LRScheduler:
    """Base class: ``step()`` once per epoch multiplies each group's ``lr`` by ``factor(epoch)``.

    Like PyTorch's chainable schedulers, it scales the current ``lr``, so changes made
    to it by hand carry on. ``get_last_lr()`` lists the current rates.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.last_epoch = 0

    def factor(self, epoch: int) -> float:
        """The multiplier applied to ``lr`` when the schedule reaches ``epoch``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and update every group's ``lr``."""
        self.last_epoch += 1
        multiplier = self.factor(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] *= multiplier

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group now."""
        return [group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """Multiply ``lr`` by ``gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).

    >>> opt = SGD([mt.Tensor([0.0], requires_grad=True)], lr=1.0)
    >>> sched = StepLR(opt, step_size=2, gamma=0.5)
    >>> [(sched.step(), sched.get_last_lr()[0])[1] for _ in range(4)]
    [1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        check_positive_int(step_size, "step_size", "StepLR")
        _check_at_least("StepLR", "gamma", gamma)
        super().__init__(optimizer)
        self.step_size, self.gamma = step_size, gamma

    def factor(self, epoch: int) -> float:
        return self.gamma if epoch % self.step_size == 0 else 1.0


class ExponentialLR(LRScheduler):
    """Multiply ``lr`` by ``gamma`` every epoch (``torch.optim.lr_scheduler.ExponentialLR``).

    >>> opt = SGD([mt.Tensor([0.0], requires_grad=True)], lr=1.0)
    >>> sched = ExponentialLR(opt, gamma=0.5); sched.step(); sched.step()
    >>> sched.get_last_lr()
    [0.25]
    """

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        _check_at_least("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer)
        self.gamma = gamma

    def factor(self, epoch: int) -> float:
        return self.gamma
