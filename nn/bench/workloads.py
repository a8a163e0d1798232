"""The workloads: MLP shapes and batch sizes, and their seeded data and initial weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 0.05


@dataclass(frozen=True)
class Workload:
    """An MLP shape (inputs, hidden sizes..., classes) and a batch size.

    >>> Workload("W1", (2, 32, 2), 64).label
    'W1 2-32-2, batch 64'
    """

    name: str
    sizes: tuple[int, ...]
    batch: int

    @property
    def label(self) -> str:
        return f"{self.name} {'-'.join(map(str, self.sizes))}, batch {self.batch}"


WORKLOADS = (
    Workload("W1", (2, 32, 2), 64),  # tiny: the engine's overhead decides
    Workload("W2", (64, 32, 32, 10), 1257),  # the digits training set as one batch
    Workload("W3", (784, 128, 10), 64),  # an MNIST minibatch
    Workload("W4", (784, 1024, 1024, 10), 512),  # the matmuls decide
)
# A three-layer net of the size people check and draw by hand.
TOOLS_WORKLOAD = Workload("tools", (4, 16, 16, 3), 16)


@dataclass
class Problem:
    """A workload's data and initial weights in one dtype; implementations copy them.

    ``weights`` is ``[W1, b1, W2, b2, ...]`` with ``W`` of shape ``(fan_in, fan_out)``.
    """

    workload: Workload
    X: np.ndarray
    y: np.ndarray
    onehot: np.ndarray
    weights: list[np.ndarray]
    lr: float = LEARNING_RATE


def make_problem(workload: Workload, dtype: str = "float64", seed: int = 0) -> Problem:
    """Synthetic data of the workload's shape and Kaiming-initialised weights, seeded.

    >>> p = make_problem(Workload("W1", (2, 32, 2), 64), "float32")
    >>> p.X.shape, p.X.dtype, [w.shape for w in p.weights]
    ((64, 2), dtype('float32'), [(2, 32), (32,), (32, 2), (2,)])
    """
    rng = np.random.default_rng(seed)
    sizes, n = workload.sizes, workload.batch
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        weights.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)).astype(dtype))
        # Nonzero biases, so a mistake in a bias gradient shows in the agreement check.
        weights.append((0.1 * rng.standard_normal(fan_out)).astype(dtype))
    return Problem(workload, X, y, np.eye(sizes[-1], dtype=dtype)[y], weights)


def parameter_names(count: int) -> list[str]:
    """``["W1", "b1", "W2", "b2", ...]`` for ``count`` arrays.

    >>> parameter_names(4)
    ['W1', 'b1', 'W2', 'b2']
    """
    return [f"{'Wb'[i % 2]}{i // 2 + 1}" for i in range(count)]
