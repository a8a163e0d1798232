"""Layers: Linear (``x @ W + b``, the notebooks' layout), activations, Dropout, LogSoftmax.

>>> import numpy as np
>>> layer = Linear(3, 2, seed=0)
>>> layer.weight.shape, layer.bias.shape
((3, 2), (2,))
>>> layer(np.ones((4, 3), dtype=np.float32)).shape
(4, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

import microtensor as mt
from nn.arguments import check_positive_int
from nn.module import Module, Parameter

Seed = int | np.random.Generator | None


def _kaiming(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    # He et al. 2015: keeps the variance of ReLU activations constant from layer to layer.
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def _xavier(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    # Glorot & Bengio 2010, uniform form: variance 2 / (fan_in + fan_out), for tanh/sigmoid nets.
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _small(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    return 0.01 * rng.standard_normal((fan_in, fan_out))  # the notebooks' 0.01 * randn


INITS = {"kaiming": _kaiming, "xavier": _xavier, "small": _small}


def init_weight(init: str, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(fan_in, fan_out)`` weight drawn by the named scheme: kaiming, xavier or small.

    >>> init_weight("small", 2, 3, np.random.default_rng(0)).shape
    (2, 3)
    """
    if init not in INITS:
        raise ValueError(f"Linear: unknown init {init!r}; choose one of {sorted(INITS)}")
    return INITS[init](fan_in, fan_out, rng)


class Linear(Module):
    """``y = x @ weight + bias`` with ``weight`` of shape ``(in_features, out_features)``.

    ``init`` picks the weight initialisation: ``"kaiming"`` (normal, std sqrt(2/in), the
    default, for ReLU nets), ``"xavier"`` (uniform, for tanh/sigmoid nets) or ``"small"``
    (``0.01 * randn``, as in the notebooks). Biases start at zero. ``seed`` is an int or a
    ``np.random.Generator`` (models pass one generator through all their layers).

    >>> Linear(64, 10, init="small", dtype=np.float64, seed=0).weight.dtype
    dtype('float64')
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str = "kaiming",
        dtype: Any = np.float32,
        seed: Seed = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_features, "in_features", "Linear")
        check_positive_int(out_features, "out_features", "Linear")
        rng = np.random.default_rng(seed)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init_weight(init, in_features, out_features, rng).astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x: Any) -> mt.Tensor:
        if self.bias is None:
            return mt.matmul(x, self.weight)
        return mt.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"


class ReLU(Module):
    """``max(x, 0)`` element-wise.

    >>> ReLU()(mt.Tensor([-1.0, 2.0])).data
    array([0., 2.])
    """

    def forward(self, x: Any) -> mt.Tensor:
        return mt.relu(x)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` element-wise.

    >>> Sigmoid()(mt.Tensor([0.0])).data
    array([0.5])
    """

    def forward(self, x: Any) -> mt.Tensor:
        return mt.sigmoid(x)


class Tanh(Module):
    """``tanh(x)`` element-wise.

    >>> Tanh()(mt.Tensor([0.0])).data
    array([0.])
    """

    def forward(self, x: Any) -> mt.Tensor:
        return mt.tanh(x)


class LogSoftmax(Module):
    """``log(softmax(x))`` along ``axis``, computed stably.

    >>> np.exp(LogSoftmax()(mt.Tensor([[1.0, 1.0]])).data)
    array([[0.5, 0.5]])
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any) -> mt.Tensor:
        return mt.log_softmax(x, axis=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Dropout(Module):
    """Inverted dropout: in training, zero each entry with probability ``p`` and scale the
    rest by ``1 / (1 - p)``, so nothing changes at evaluation, where it is the identity.

    >>> drop = Dropout(0.5, seed=0)
    >>> np.unique(drop(mt.Tensor(np.ones(100))).data)
    array([0., 2.])
    >>> drop.eval()(mt.Tensor([1.0, 1.0])).data
    array([1., 1.])
    """

    def __init__(self, p: float = 0.5, *, seed: Seed = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def forward(self, x: Any) -> mt.Tensor:
        if not self.training or self.p == 0.0:
            return x if isinstance(x, mt.Tensor) else mt.Tensor(x)
        data = x.data if isinstance(x, mt.Tensor) else np.asarray(x)
        keep = self.rng.random(data.shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        return mt.mul(x, (keep * scale).astype(data.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}"
