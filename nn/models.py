"""The notebooks' networks: TwoLayerNet, ThreeLayerNet, and a general MLP.

Each takes ``seed=`` (one generator feeds every layer, so a seed fixes the whole
initialisation) and ``dtype=`` (float32 by default, float64 for checking gradients).

>>> import numpy as np
>>> net = TwoLayerNet(4, 8, 3, seed=0)
>>> net(np.ones((2, 4), dtype=np.float32)).shape
(2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import microtensor as mt
from nn.layers import Dropout, Linear, ReLU, Seed, Sigmoid, Tanh
from nn.module import Module, Sequential

ACTIVATIONS: dict[str, type[Module]] = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def linear_chain(sizes: Sequence[int], *, seed: Seed, dtype: Any, init: str) -> list[Linear]:
    """One Linear per consecutive pair of ``sizes``, all drawn from one seeded generator.

    >>> [layer.weight.shape for layer in linear_chain([4, 3, 2], seed=0, dtype=np.float32, init="small")]
    [(4, 3), (3, 2)]
    """
    rng = np.random.default_rng(seed)
    pairs = zip(sizes, sizes[1:])
    return [Linear(fan_in, fan_out, init=init, dtype=dtype, seed=rng) for fan_in, fan_out in pairs]


class TwoLayerNet(Module):
    """Linear -> ReLU -> Linear, with children ``fc1``, ``relu``, ``fc2``.

    >>> [name for name, _ in TwoLayerNet(2, 5, 2).named_parameters()]
    ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, *,
                 seed: Seed = None, dtype: Any = np.float32, init: str = "kaiming") -> None:
        super().__init__()
        fc1, fc2 = linear_chain([in_features, hidden, out_features], seed=seed, dtype=dtype, init=init)
        self.fc1, self.relu, self.fc2 = fc1, ReLU(), fc2  # assigned left to right: the registration order

    def forward(self, x: Any) -> mt.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class ThreeLayerNet(Module):
    """Linear -> ReLU -> Linear -> ReLU -> Linear: ``fc1``, ``relu1``, ``fc2``, ``relu2``, ``fc3``.

    >>> ThreeLayerNet(64, 64, 32, 10, seed=0).fc3.weight.shape
    (32, 10)
    """

    def __init__(self, in_features: int, hidden1: int, hidden2: int, out_features: int, *,
                 seed: Seed = None, dtype: Any = np.float32, init: str = "kaiming") -> None:
        super().__init__()
        sizes = [in_features, hidden1, hidden2, out_features]
        fc1, fc2, fc3 = linear_chain(sizes, seed=seed, dtype=dtype, init=init)
        self.fc1, self.relu1, self.fc2, self.relu2, self.fc3 = fc1, ReLU(), fc2, ReLU(), fc3

    def forward(self, x: Any) -> mt.Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class MLP(Sequential):
    """``Linear, activation, [Dropout], ..., Linear`` through ``sizes``; a Sequential.

    >>> net = MLP([4, 8, 8, 2], activation="tanh", dropout=0.1, seed=0)
    >>> [type(m).__name__ for m in net]
    ['Linear', 'Tanh', 'Dropout', 'Linear', 'Tanh', 'Dropout', 'Linear']
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0, *,
                 seed: Seed = None, dtype: Any = np.float32, init: str = "kaiming") -> None:
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        rng = np.random.default_rng(seed)
        *hidden, last = linear_chain(sizes, seed=rng, dtype=dtype, init=init)
        layers: list[Module] = []
        for linear in hidden:
            layers += [linear, ACTIVATIONS[activation]()]
            if dropout:
                layers.append(Dropout(dropout, seed=rng))
        super().__init__(*layers, last)
