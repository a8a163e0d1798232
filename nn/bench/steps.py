"""Implementations of one training step: the NumPy reference, the matmul floor, microtensor, peers.

Each is a class with ``step()``, ``gradients()`` and ``weights()`` (see :class:`Trainer`),
registered as an :class:`Implementation` (a column of the table).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

import microtensor as mt
from nn import functional, optim
from nn.bench.workloads import Problem
from nn.models import MLP, ThreeLayerNet, TwoLayerNet


class Trainer(Protocol):
    """One implementation of a training step on a fixed batch."""

    def step(self) -> Any:
        """Run one step (forward, loss, backward, SGD update); return the loss."""

    def gradients(self) -> list[np.ndarray] | None:
        """The last step's gradients in the layout of ``Problem.weights``, or None if hidden."""

    def weights(self) -> list[np.ndarray] | None:
        """The current weights in the layout of ``Problem.weights``, or None if not comparable."""


class NumpyStep:
    """The reference: the notebooks' formulas, written plainly, not tuned.

    >>> from nn.bench.workloads import WORKLOADS, make_problem
    >>> trainer = NumpyStep(make_problem(WORKLOADS[0]))
    >>> float(trainer.step()) > 0
    True
    """

    def __init__(self, problem: Problem) -> None:
        self.X, self.y, self.onehot, self.lr = problem.X, problem.y, problem.onehot, problem.lr
        self.params = [w.copy() for w in problem.weights]
        self.grads: list[np.ndarray] | None = None

    def step(self) -> Any:
        Ws, bs = self.params[0::2], self.params[1::2]
        N = self.X.shape[0]
        layer_inputs, pre_activations = [], []
        h = self.X
        for W, b in zip(Ws[:-1], bs[:-1]):
            z = h @ W + b
            layer_inputs.append(h)
            pre_activations.append(z)
            h = np.maximum(0, z)
        layer_inputs.append(h)
        scores = h @ Ws[-1] + bs[-1]
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        probs = exp / exp.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(N), self.y]).mean()

        d = (probs - self.onehot) / N
        grads: list[np.ndarray] = []
        for layer in reversed(range(len(Ws))):
            grads = [layer_inputs[layer].T @ d, d.sum(axis=0)] + grads
            if layer > 0:
                d = (d @ Ws[layer].T) * (pre_activations[layer - 1] > 0)
        for p, g in zip(self.params, grads):
            p -= self.lr * g
        self.grads = grads
        return loss

    def gradients(self) -> list[np.ndarray] | None:
        return self.grads

    def weights(self) -> list[np.ndarray] | None:
        return self.params


def matmul_operands(problem: Problem) -> list[tuple[np.ndarray, np.ndarray]]:
    """Operands of every matmul in one training step: forward, weight gradients, input gradients.

    >>> from nn.bench.workloads import WORKLOADS, make_problem
    >>> [(a.shape, b.shape) for a, b in matmul_operands(make_problem(WORKLOADS[0]))]
    [((64, 2), (2, 32)), ((64, 32), (32, 2)), ((2, 64), (64, 32)), ((32, 64), (64, 2)), ((64, 2), (2, 32))]
    """
    rng = np.random.default_rng(1)
    Ws, n, dtype = problem.weights[0::2], problem.X.shape[0], problem.X.dtype
    inputs = [problem.X] + [rng.standard_normal((n, W.shape[0])).astype(dtype) for W in Ws[1:]]
    deltas = [rng.standard_normal((n, W.shape[1])).astype(dtype) for W in Ws]
    forward = list(zip(inputs, Ws))
    weight_grads = [(h.T, d) for h, d in zip(inputs, deltas)]
    input_grads = [(d, W.T) for d, W in zip(deltas[1:], Ws[1:])]
    return forward + weight_grads + input_grads


class MatmulFloor:
    """The matmuls of a step and nothing else: the BLAS floor for this machine."""

    def __init__(self, problem: Problem) -> None:
        self.operands = matmul_operands(problem)

    def step(self) -> Any:
        for a, b in self.operands:
            a @ b

    def gradients(self) -> list[np.ndarray] | None:
        return None

    def weights(self) -> list[np.ndarray] | None:
        return None


def _mlp_logits(x: Any, params: Sequence[Any], relu: Callable[[Any], Any]) -> Any:
    """``x`` through Linear layers ``(W, b)`` taken pairwise from ``params``, ReLU between them."""
    Ws, bs = params[0::2], params[1::2]
    for W, b in zip(Ws[:-1], bs[:-1]):
        x = relu(x @ W + b)
    return x @ Ws[-1] + bs[-1]


def microtensor_loss(X: np.ndarray, y: np.ndarray, params: Sequence[mt.Tensor]) -> mt.Tensor:
    """The softmax cross-entropy of an MLP written with raw Tensors.

    >>> from nn.bench.workloads import WORKLOADS, make_problem
    >>> p = make_problem(WORKLOADS[0])
    >>> loss = microtensor_loss(p.X, p.y, [mt.Tensor(w) for w in p.weights])
    >>> bool(np.isclose(loss.item(), NumpyStep(p).step()))
    True
    """
    logp = _mlp_logits(X, params, mt.relu).log_softmax(axis=-1)
    return -logp[np.arange(len(y)), y].mean()


class MicrotensorTensors:
    """The engine alone: parameters are Tensors, the SGD loop is written by hand."""

    def __init__(self, problem: Problem) -> None:
        self.X, self.y, self.lr = problem.X, problem.y, problem.lr
        self.params = [mt.Tensor(w.copy(), requires_grad=True) for w in problem.weights]

    def step(self) -> Any:
        for p in self.params:
            p.zero_grad()
        loss = microtensor_loss(self.X, self.y, self.params)
        loss.backward()
        for p in self.params:
            p.data -= self.lr * p.grad
        return loss

    def gradients(self) -> list[np.ndarray] | None:
        return [p.grad for p in self.params]

    def weights(self) -> list[np.ndarray] | None:
        return [p.data for p in self.params]


def nn_model(sizes: Sequence[int], dtype: Any) -> MLP | TwoLayerNet | ThreeLayerNet:
    """The ``nn`` model a user would pick for these sizes: the notebooks' nets, else an MLP.

    >>> type(nn_model((2, 32, 2), np.float64)).__name__
    'TwoLayerNet'
    """
    if len(sizes) == 3:
        return TwoLayerNet(*sizes, dtype=dtype)
    if len(sizes) == 4:
        return ThreeLayerNet(*sizes, dtype=dtype)
    return MLP(sizes, dtype=dtype)


class MicrotensorNN:
    """What the targets are about: an ``nn`` model, ``cross_entropy`` and ``optim.SGD``."""

    def __init__(self, problem: Problem) -> None:
        self.X, self.y = problem.X, problem.y
        self.model = nn_model(problem.workload.sizes, problem.X.dtype)
        names = [name for name, _ in self.model.named_parameters()]
        self.model.load_state_dict(dict(zip(names, problem.weights)))
        self.optimizer = optim.SGD(self.model.parameters(), lr=problem.lr)

    def step(self) -> Any:
        self.optimizer.zero_grad()
        loss = functional.cross_entropy(self.model(self.X), self.y)
        loss.backward()
        self.optimizer.step()
        return loss

    def gradients(self) -> list[np.ndarray] | None:
        return [p.grad for p in self.model.parameters()]

    def weights(self) -> list[np.ndarray] | None:
        return [p.data for p in self.model.parameters()]


class _TorchTrainer:
    """Shared by the PyTorch implementations: the torch module and the batch as tensors."""

    def __init__(self, problem: Problem) -> None:
        import torch

        self.torch = torch
        self.X = torch.from_numpy(problem.X.copy())
        self.y = torch.from_numpy(problem.y)
        self.lr = problem.lr


class TorchEager(_TorchTrainer):
    """PyTorch tensors with ``requires_grad`` and a hand-written SGD update."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.params = [self.torch.tensor(w, requires_grad=True) for w in problem.weights]

    def step(self) -> Any:
        torch = self.torch
        for p in self.params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(_mlp_logits(self.X, self.params, torch.relu), self.y)
        loss.backward()
        with torch.no_grad():
            for p in self.params:
                p -= self.lr * p.grad
        return loss

    def gradients(self) -> list[np.ndarray] | None:
        return [p.grad.numpy() for p in self.params]

    def weights(self) -> list[np.ndarray] | None:
        return [p.detach().numpy() for p in self.params]


class TorchNN(_TorchTrainer):
    """``torch.nn.Sequential`` of ``Linear`` and ``ReLU``, ``torch.optim.SGD``."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        torch = self.torch
        dtype = getattr(torch, problem.X.dtype.name)
        sizes = problem.workload.sizes
        layers: list[Any] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(fan_in, fan_out, dtype=dtype), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.linears = list(self.model)[0::2]
        with torch.no_grad():
            for linear, W, b in zip(self.linears, problem.weights[0::2], problem.weights[1::2]):
                linear.weight.copy_(torch.from_numpy(W.T))  # torch keeps (fan_out, fan_in)
                linear.bias.copy_(torch.from_numpy(b))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=problem.lr)

    def step(self) -> Any:
        self.optimizer.zero_grad()
        loss = self.torch.nn.functional.cross_entropy(self.model(self.X), self.y)
        loss.backward()
        self.optimizer.step()
        return loss

    def _pairs(self, of: Callable[[Any], Any]) -> list[np.ndarray]:
        return [a for lin in self.linears for a in (of(lin.weight).numpy().T, of(lin.bias).numpy())]

    def gradients(self) -> list[np.ndarray] | None:
        return self._pairs(lambda p: p.grad)

    def weights(self) -> list[np.ndarray] | None:
        return self._pairs(lambda p: p.detach())


class SklearnMLP:
    """scikit-learn's ``MLPClassifier``: one ``partial_fit`` per step (plain SGD, no L2).

    With two classes it has one logistic output instead of a two-way softmax; the softmax
    weights map onto it exactly (``sigmoid(z1 - z0)`` is the softmax's ``p1``), so the loss
    agrees, but its gradients and weights live in another parametrisation.
    """

    def __init__(self, problem: Problem) -> None:
        from sklearn.neural_network import MLPClassifier

        sizes = problem.workload.sizes
        self.X, self.y = problem.X, problem.y
        self.clf = MLPClassifier(
            hidden_layer_sizes=sizes[1:-1], solver="sgd", learning_rate="constant",
            learning_rate_init=problem.lr, momentum=0.0, nesterovs_momentum=False, alpha=0.0,
            batch_size=len(self.X), shuffle=False,
        )
        # The first call creates its weights; ours are then copied into them in place.
        self.clf.partial_fit(self.X, self.y, classes=np.arange(sizes[-1]))
        self.binary = sizes[-1] == 2
        Ws, bs = problem.weights[0::2], problem.weights[1::2]
        if self.binary:
            Ws = Ws[:-1] + [Ws[-1][:, 1:] - Ws[-1][:, :1]]
            bs = bs[:-1] + [bs[-1][1:] - bs[-1][:1]]
        for theirs, ours in zip(self.clf.coefs_ + self.clf.intercepts_, Ws + bs):
            theirs[...] = ours

    def step(self) -> Any:
        self.clf.partial_fit(self.X, self.y)
        return self.clf.loss_

    def gradients(self) -> list[np.ndarray] | None:
        return None  # kept inside partial_fit; the weights after the step check them

    def weights(self) -> list[np.ndarray] | None:
        if self.binary:
            return None
        return [a for pair in zip(self.clf.coefs_, self.clf.intercepts_) for a in pair]


@dataclass(frozen=True)
class Implementation:
    """A column of the benchmark: how to build a trainer, and what it needs installed."""

    name: str
    label: str
    make: Callable[[Problem], Trainer]
    requires: str | None = None


REFERENCE = Implementation("numpy", "NumPy by hand", NumpyStep)
FLOOR = Implementation("floor", "matmuls only", MatmulFloor)
IMPLEMENTATIONS = {
    impl.name: impl
    for impl in (
        REFERENCE,
        FLOOR,
        Implementation("microtensor-nn", "microtensor nn+optim", MicrotensorNN),
        Implementation("microtensor", "microtensor tensors", MicrotensorTensors),
        Implementation("torch", "PyTorch eager", TorchEager, requires="torch"),
        Implementation("torch-nn", "PyTorch nn+optim", TorchNN, requires="torch"),
        Implementation("sklearn", "sklearn MLPClassifier", SklearnMLP, requires="sklearn"),
    )
}
# The implementation the targets are about.
TARGET = "microtensor-nn"


def implementation(name_or_impl: str | Implementation) -> Implementation:
    """An :class:`Implementation` given by name (a key of ``IMPLEMENTATIONS``) or as itself.

    >>> implementation("numpy").label
    'NumPy by hand'
    """
    if isinstance(name_or_impl, Implementation):
        return name_or_impl
    if name_or_impl not in IMPLEMENTATIONS:
        known = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"bench: unknown implementation {name_or_impl!r}; known: {known}")
    return IMPLEMENTATIONS[name_or_impl]


def resolve(implementations: Sequence[str | Implementation] | None) -> tuple[list[Implementation], dict]:
    """The implementations to run, reference first, and why any were skipped.

    >>> [impl.name for impl in resolve(["microtensor"])[0]]
    ['numpy', 'microtensor']
    """
    chosen = [implementation(i) for i in implementations or IMPLEMENTATIONS]
    ready, skipped = [REFERENCE], {}
    for impl in chosen:
        if impl.name == REFERENCE.name:
            continue
        try:
            if impl.requires:
                importlib.import_module(impl.requires)
            ready.append(impl)
        except ImportError as err:
            skipped[impl.name] = f"{impl.requires} is not importable ({err})"
    return ready, skipped
