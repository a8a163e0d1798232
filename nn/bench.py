"""Benchmark harness: a training step of microtensor against a hand-written NumPy step.

A workload is an MLP shape and a batch size. Every implementation of one training step
(forward, softmax cross-entropy averaged over the batch, backward, SGD update) starts from
the same weights and data. Before timing, each one's first step is checked against the
NumPy reference (loss, gradients, weights after the update); then all of them run
interleaved in rounds, and each is reported as the median of its per-round ratios to the
reference. ``microtensor bench`` (:func:`main`) runs a quick version in this process;
``python benchmarks/run.py`` runs the full one per thread setting and writes
``docs/performance.md``.

>>> report = run([Workload("tiny", (3, 4, 2), 5)], implementations=["numpy", "microtensor"],
...              rounds=2, block_seconds=0.001)
>>> [(r.implementation, r.agrees) for r in report.results]
[('numpy', None), ('microtensor', True)]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import microtensor as mt
from nn import functional, optim
from nn.models import MLP, ThreeLayerNet, TwoLayerNet

LEARNING_RATE = 0.05
# Relative error allowed between an implementation's first step and the reference's.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# -- workloads --------------------------------------------------------------------------------
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


# -- implementations of one training step -----------------------------------------------------
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
    """Shared by the PyTorch implementations: the batch as tensors, the loss function."""

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


# -- agreement before timing ------------------------------------------------------------------
@dataclass
class FirstStep:
    """What one step from the initial weights produced."""

    loss: float
    gradients: list[np.ndarray] | None
    weights: list[np.ndarray] | None


def first_step(trainer: Trainer) -> FirstStep:
    """Run the first step and copy out its loss, gradients and updated weights."""
    loss = trainer.step()
    loss = float(loss.item() if hasattr(loss, "item") else loss)  # numpy, microtensor and torch scalars
    copy = lambda arrays: None if arrays is None else [np.array(a, dtype=np.float64) for a in arrays]
    return FirstStep(loss, copy(trainer.gradients()), copy(trainer.weights()))


def _relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    return float(np.max(np.abs(expected - actual), initial=0.0)) / scale


def disagreement(reference: FirstStep, other: FirstStep, tolerance: float) -> str | None:
    """What differs between two first steps beyond ``tolerance`` (relative), or None.

    >>> same = FirstStep(1.0, [np.ones(2)], None)
    >>> disagreement(same, same, 1e-9) is None
    True
    >>> disagreement(same, FirstStep(1.0, [2 * np.ones(2)], None), 1e-9)
    'gradient of W1: relative error 1e+00 > 1e-09'
    """
    error = _relative_error(np.array(reference.loss), np.array(other.loss))
    if not error <= tolerance:
        return f"loss {other.loss:.6g} vs {reference.loss:.6g}: relative error {error:.0e} > {tolerance:.0e}"
    for what in ("gradients", "weights"):
        ours, theirs = getattr(reference, what), getattr(other, what)
        if theirs is None:
            continue
        for name, expected, actual in zip(parameter_names(len(ours)), ours, theirs):
            label = f"{what[:-1].replace('weight', 'updated weight')} of {name}"
            if expected.shape != actual.shape:
                return f"{label}: shape {actual.shape}, expected {expected.shape}"
            error = _relative_error(expected, actual)
            if not error <= tolerance:
                return f"{label}: relative error {error:.0e} > {tolerance:.0e}"
    return None


def _checked(other: FirstStep) -> str:
    parts = ["loss"] + [what for what in ("gradients", "weights") if getattr(other, what) is not None]
    return "agrees on " + ", ".join(parts)


# -- interleaved timing -----------------------------------------------------------------------
def _time_block(trainer: Trainer, steps: int) -> float:
    """Seconds per step over a block of ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return (time.perf_counter() - start) / steps


def _steps_per_block(trainer: Trainer, block_seconds: float) -> int:
    """How many steps fill about ``block_seconds``, measured on doubling blocks after a warm-up."""
    _time_block(trainer, 1)  # the first calls may build caches (optimizer state, BLAS buffers)
    steps = 1
    while True:
        per_step = _time_block(trainer, steps)
        if per_step * steps >= block_seconds / 4 or steps >= 1 << 16:
            return max(1, round(block_seconds / per_step))
        steps *= 2


def interleave(trainers: dict[str, Trainer], rounds: int, block_seconds: float) -> tuple[dict, dict]:
    """Per-step seconds of each trainer in each round, and the steps per block used.

    Every round runs every trainer for one block; the order rotates from round to round,
    so no implementation always runs first (or right after a heavy one).
    """
    steps = {name: _steps_per_block(t, block_seconds) for name, t in trainers.items()}
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_block(trainers[name], steps[name]))
    return times, steps


def _paired_ratios(times: list[float], baseline: list[float]) -> list[float]:
    return [t / b for t, b in zip(times, baseline)]


# -- results ----------------------------------------------------------------------------------
@dataclass
class Result:
    """One implementation on one workload in one dtype. Times are seconds per step."""

    workload: str
    dtype: str
    implementation: str
    check: str
    agrees: bool | None = None  # None: not compared (the reference itself, the floor)
    steps_per_block: int = 0
    median: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    ratio: float | None = None  # median of per-round ratios to the reference
    ratio_min: float | None = None
    ratio_max: float | None = None
    floor_ratio: float | None = None  # median of per-round ratios to the matmul floor


@dataclass
class Report:
    """Everything one run measured, in one thread setting; JSON round-trips it."""

    machine: dict[str, str]
    threads: dict[str, Any]
    settings: dict[str, Any]
    workloads: list[str]
    labels: dict[str, str]
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    tools: dict[str, float | str] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average at start and end

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(**{**data, "results": [Result(**r) for r in data["results"]]})

    @property
    def ok(self) -> bool:
        """False when some implementation disagreed with the reference."""
        return all(r.agrees is not False for r in self.results)


def _summarise(workload: str, dtype: str, checks: dict[str, tuple[str, bool | None]],
               times: dict[str, list[float]], steps: dict[str, int]) -> list[Result]:
    results = []
    for name, (check, agrees) in checks.items():
        result = Result(workload, dtype, name, check, agrees)
        if name in times:
            ratios = _paired_ratios(times[name], times[REFERENCE.name])
            result.steps_per_block = steps[name]
            result.median = statistics.median(times[name])
            result.minimum, result.maximum = min(times[name]), max(times[name])
            result.ratio = statistics.median(ratios)
            result.ratio_min, result.ratio_max = min(ratios), max(ratios)
            if FLOOR.name in times:
                result.floor_ratio = statistics.median(_paired_ratios(times[name], times[FLOOR.name]))
        results.append(result)
    return results


def bench_workload(workload: Workload, dtype: str, implementations: Sequence[Implementation],
                   rounds: int, block_seconds: float) -> list[Result]:
    """Check every implementation's first step against the reference, then time the agreeing ones."""
    problem = make_problem(workload, dtype)
    trainers = {impl.name: impl.make(problem) for impl in implementations}
    reference = first_step(trainers[REFERENCE.name])
    checks: dict[str, tuple[str, bool | None]] = {REFERENCE.name: ("reference", None)}
    for name, trainer in trainers.items():
        if name == REFERENCE.name:
            continue
        if name == FLOOR.name:
            checks[name] = ("not a training step", None)
            continue
        other = first_step(trainer)
        wrong = disagreement(reference, other, TOLERANCE[dtype])
        checks[name] = (f"DISAGREES: {wrong}", False) if wrong else (_checked(other), True)
    timed = {name: t for name, t in trainers.items() if checks[name][1] is not False}
    times, steps = interleave(timed, rounds, block_seconds)
    return _summarise(workload.name, dtype, checks, times, steps)


# -- threads and machine ----------------------------------------------------------------------
def set_threads(threads: int | None) -> dict[str, Any]:
    """Limit BLAS, OpenMP and torch to ``threads`` threads (None: leave them); report what holds.

    Only libraries already loaded are limited in place (the variables cover later ones),
    so import the optional libraries first; the runner also sets the variables before
    starting each process.
    """
    method = "as found"
    if threads is not None:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(threads)
        method = "environment variables"
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads)
            method = "threadpoolctl"
        except ImportError:
            pass
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return {"requested": threads, "method": method, **_threads_in_effect()}


def _threads_in_effect() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    found: dict[str, Any] = {"torch": None if torch is None else torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info

        found["pools"] = {f"{p['internal_api']} ({p['prefix']})": p["num_threads"] for p in threadpool_info()}
    except ImportError:
        found["pools"] = {v: os.environ.get(v, "unset") for v in THREAD_VARIABLES}
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool["user_api"] == "blas" and "numpy" in pool["filepath"]:
                return f"{pool['internal_api']} {pool['version']} ({pool['architecture']})"
    except ImportError:
        pass
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return f"{blas.get('name')} {blas.get('version')}"


def machine() -> dict[str, str]:
    """The CPU, core count and library versions the numbers belong to."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy BLAS": _numpy_blas(),
        "torch": _version("torch"),
        "scikit-learn": _version("scikit-learn"),
    }


# -- interactive tools ------------------------------------------------------------------------
def _median_seconds(action: Callable[[], Any], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_tools(repeats: int = 5) -> dict[str, float | str]:
    """Median seconds of the interactive tools on a small three-layer net.

    ``gradcheck`` and ``draw_graph`` are timed once the engine has them. A tool that
    raises is reported as ``"failed: ..."`` instead of stopping the benchmark.

    >>> "tape" in time_tools(repeats=1)
    True
    """
    problem = make_problem(TOOLS_WORKLOAD)
    params = [mt.Tensor(w.copy(), requires_grad=True) for w in problem.weights]
    loss_of = lambda *ps: microtensor_loss(problem.X, problem.y, ps)
    loss = loss_of(*params)
    tools = {
        "tape": lambda: str(mt.tape(loss)),
        "gradcheck": lambda: mt.gradcheck(loss_of, params),
        "draw_graph": lambda: mt.draw_graph(loss).source,
    }
    timings: dict[str, float | str] = {}
    for name, action in tools.items():
        if hasattr(mt, name):
            try:
                timings[name] = _median_seconds(action, repeats)
            except Exception as err:  # any failure is itself the finding
                timings[name] = f"failed: {type(err).__name__}: {err}"
    return timings


# -- memory -----------------------------------------------------------------------------------
def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def peak_rss(impl: str | Implementation, workload: Workload, dtype: str, steps: int) -> dict[str, Any]:
    """Peak RSS (KiB) before and after ``steps`` training steps; meaningful in a fresh process.

    >>> peak_rss("numpy", Workload("tiny", (3, 4, 2), 5), "float64", 2)["peak_kib"] > 0
    True
    """
    impl = implementation(impl)
    trainer = impl.make(make_problem(workload, dtype))
    setup = _peak_rss_kib()
    for _ in range(steps):
        trainer.step()
    return {"implementation": impl.name, "setup_kib": setup, "peak_kib": _peak_rss_kib()}


def in_fresh_process(call: str, threads: int | None = None) -> Any:
    """Evaluate ``call`` (with ``b`` standing for ``nn.bench``) in a new Python; return its JSON.

    The new process imports this checkout's packages, and its thread variables are set
    to ``threads`` before any library loads.

    >>> in_fresh_process("b.parameter_names(2)")
    ['W1', 'b1']
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env.update({variable: str(threads) for variable in THREAD_VARIABLES})
    code = f"import json, nn.bench as b; print(json.dumps({call}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench: {call} failed in a fresh process:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def peak_rss_in_fresh_process(impl: str, workload: Workload, dtype: str, steps: int) -> dict:
    """:func:`peak_rss` in a new process with one BLAS thread, so nothing else this process did counts."""
    return in_fresh_process(f"b.peak_rss({impl!r}, b.{workload!r}, {dtype!r}, {steps})", threads=1)


def _cyclic_garbage_per_step(trainer: Trainer, steps: int) -> float:
    """Objects only the cycle collector could free, per step: zero when nothing forms a cycle."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(steps):
            trainer.step()
    finally:
        found = gc.collect()
        gc.enable()
    return found / steps


def memory_growth(impl: str | Implementation, workload: Workload, steps: int, dtype: str = "float64") -> dict:
    """Memory still held after ``steps`` more training steps (tracemalloc and RSS), and cycles.

    >>> growth = memory_growth("numpy", Workload("tiny", (3, 4, 2), 5), 20)
    >>> growth["cyclic_objects_per_step"]
    0.0
    """
    impl = implementation(impl)
    trainer = impl.make(make_problem(workload, dtype))
    for _ in range(min(steps, 100)):  # warm caches and free lists first
        trainer.step()
    gc.collect()
    rss_before = _current_rss_kib()
    tracemalloc.start()
    for _ in range(steps):
        trainer.step()
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "implementation": impl.name,
        "steps": steps,
        "traced_growth_bytes": traced,
        "rss_growth_kib": _current_rss_kib() - rss_before,
        "cyclic_objects_per_step": _cyclic_garbage_per_step(trainer, min(steps, 100)),
    }


def _current_rss_kib() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError):
        return _peak_rss_kib()


def memory_growth_in_fresh_process(impl: str, workload: Workload, steps: int) -> dict:
    """:func:`memory_growth` in a new process with one BLAS thread."""
    return in_fresh_process(f"b.memory_growth({impl!r}, b.{workload!r}, {steps})", threads=1)


# -- running ----------------------------------------------------------------------------------
QUICK = {"rounds": 3, "block_seconds": 0.01}
FULL = {"rounds": 15, "block_seconds": 0.05}


def run(workloads: Sequence[Workload] = WORKLOADS, dtypes: Sequence[str] = ("float64",),
        threads: int | None = None, implementations: Sequence[str | Implementation] | None = None,
        rounds: int = QUICK["rounds"], block_seconds: float = QUICK["block_seconds"]) -> Report:
    """Check, then time, every implementation on every workload and dtype, in this process.

    ``implementations``: names from ``IMPLEMENTATIONS`` or :class:`Implementation` objects;
    the NumPy reference always runs. ``threads`` limits BLAS and torch (None: as found).
    """
    ready, skipped = resolve(implementations)
    report = Report(machine(), set_threads(threads), {"rounds": rounds, "block_seconds": block_seconds},
                    [w.name for w in workloads], {w.name: w.label for w in workloads}, skipped=skipped,
                    load=[os.getloadavg()[0]])
    for dtype in dtypes:
        for workload in workloads:
            report.results += bench_workload(workload, dtype, ready, rounds, block_seconds)
    report.tools = time_tools()
    report.load.append(os.getloadavg()[0])
    return report


# -- the table --------------------------------------------------------------------------------
def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(result: Result | None) -> str:
    if result is None:
        return "-"
    if result.agrees is False:
        return "wrong"
    return _ratio(result.ratio)


def _columns(report: Report) -> list[str]:
    """Implementations other than the reference, in the registry's order, then any others."""
    present = {r.implementation for r in report.results} - {REFERENCE.name}
    names = [name for name in IMPLEMENTATIONS if name in present]
    return names + sorted(present - set(names))


def _label(name: str) -> str:
    return IMPLEMENTATIONS[name].label if name in IMPLEMENTATIONS else name


def _threads_title(report: Report) -> str:
    requested = report.threads["requested"]
    return "threads as found" if requested is None else f"{requested} thread{'s' * (requested != 1)}"


def ratio_table(report: Report, dtype: str) -> list[str]:
    """Markdown rows: workloads by implementations, median ratios to the NumPy step."""
    columns = _columns(report)
    found = {(r.workload, r.implementation): r for r in report.results if r.dtype == dtype}
    lines = [
        "| workload | NumPy step (ms) | " + " | ".join(_label(c) for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name in report.workloads:
        reference = found.get((name, REFERENCE.name))
        ms = "-" if reference is None or reference.median is None else f"{reference.median * 1e3:.3f}"
        cells = [_cell(found.get((name, c))) for c in columns]
        lines.append(f"| {report.labels[name]} | {ms} | " + " | ".join(cells) + " |")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def detail_table(report: Report, dtype: str) -> list[str]:
    """Markdown rows: every measurement with its spread and its agreement check."""
    lines = [
        "| workload | implementation | median ms | min-max ms | ratio | ratio min-max | "
        "vs floor | steps/block | first step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.results:
        if r.dtype != dtype:
            continue
        spread = "-" if r.minimum is None else f"{_ms(r.minimum)}-{_ms(r.maximum)}"
        ratio_spread = "-" if r.ratio_min is None else f"{r.ratio_min:.2f}-{r.ratio_max:.2f}"
        lines.append(
            f"| {r.workload} | {_label(r.implementation)} | {_ms(r.median)} | {spread} | {_ratio(r.ratio)} | "
            f"{ratio_spread} | {_ratio(r.floor_ratio)} | {r.steps_per_block} | {r.check} |"
        )
    return lines


# The speed targets for the microtensor step: workload -> (most ratio to the NumPy
# step, most ratio to the matmul floor or None).
SPEED_TARGETS = {"W1": (1.5, None), "W2": (1.05, None), "W3": (1.05, None), "W4": (0.95, 1.10)}


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def speed_targets(report: Report, dtype: str) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for each speed target this report can judge."""
    rows = []
    setting = f"{dtype}, {_threads_title(report)}"
    found = {r.workload: r for r in report.results if r.dtype == dtype and r.implementation == TARGET}
    for workload, (most, most_floor) in SPEED_TARGETS.items():
        result = found.get(workload)
        if result is None or result.ratio is None:
            continue
        rows.append((f"{workload} <= {most}x NumPy", _ratio(result.ratio), _verdict(result.ratio <= most),
                     setting))
        if most_floor is not None and result.floor_ratio is not None:
            rows.append((f"{workload} <= {most_floor}x matmul floor", _ratio(result.floor_ratio),
                         _verdict(result.floor_ratio <= most_floor), setting))
    return rows


def _dtypes(report: Report) -> list[str]:
    return list(dict.fromkeys(r.dtype for r in report.results))


def render(reports: Sequence[Report], memory: dict[str, Any] | None = None) -> str:
    """The benchmark as markdown: machine, ratio tables, targets, tools, memory, details."""
    first = reports[0]
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in first.machine.items()]
    lines += ["", f"Rounds per workload: {first.settings['rounds']}, blocks of about "
              f"{first.settings['block_seconds'] * 1e3:.0f} ms per implementation per round.", ""]
    targets: list[tuple[str, str, str, str]] = []
    for report in reports:
        lines += ["", f"## {_threads_title(report).capitalize()}", "", _describe_threads(report.threads),
                  "", _describe_load(report)]
        for dtype in _dtypes(report):
            lines += ["", f"### {dtype}, {_threads_title(report)}: step time / NumPy step time", ""]
            lines += ratio_table(report, dtype)
            targets += speed_targets(report, dtype)
        if report.skipped:
            lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in report.skipped.items()) + "."]
    targets += tool_targets(first.tools) + memory_targets(memory or {})
    lines += ["", f"## Targets ({_label(TARGET)})", "", "| target | measured | verdict | setting |",
              "|---|---:|---|---|"]
    lines += [f"| {t} | {m} | {v} | {s} |" for t, m, v, s in targets]
    if memory:
        lines += ["", "## Memory", ""] + memory_lines(memory)
    lines += ["", "## Every measurement", ""]
    for report in reports:
        for dtype in _dtypes(report):
            lines += ["", f"<details><summary>{dtype}, {_threads_title(report)}</summary>", ""]
            lines += detail_table(report, dtype) + ["", "</details>"]
    return "\n".join(lines) + "\n"


def _describe_load(report: Report) -> str:
    start, end = report.load
    return (f"Load average (1 min): {start:.2f} at the start, {end:.2f} at the end, on "
            f"{report.machine.get('cores')} cores; the benchmark adds about one per busy thread, "
            "more means other processes shared the machine.")


def _describe_threads(threads: dict[str, Any]) -> str:
    pools = ", ".join(f"{name}: {n}" for name, n in threads.get("pools", {}).items())
    return f"Set by {threads['method']}; in effect: torch {threads['torch']}, {pools}."


# "Stay interactive (well under a second)" for gradcheck, draw_graph and the tape.
TOOLS_SECONDS = 0.5


def tool_targets(tools: dict[str, float | str]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for each interactive tool timed."""
    rows = []
    sizes = "-".join(map(str, TOOLS_WORKLOAD.sizes))
    for name, seconds in tools.items():
        measured = seconds if isinstance(seconds, str) else f"{seconds * 1e3:.1f} ms"
        met = not isinstance(seconds, str) and seconds < TOOLS_SECONDS
        rows.append((f"`mt.{name}` of a {sizes} net < {TOOLS_SECONDS} s", measured, _verdict(met),
                     f"float64, batch {TOOLS_WORKLOAD.batch}"))
    return rows


# Memory targets: W4 peak RSS at most this times the NumPy run's; growth over the W1 run
# under this many bytes per step (one leaked small object per step would exceed it).
PEAK_RSS_TARGET = 1.2
GROWTH_BYTES_PER_STEP = 10


def memory_targets(memory: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for the memory measurements present."""
    rows = []
    peaks = memory.get("peak", {})
    if REFERENCE.name in peaks and TARGET in peaks:
        ratio = peaks[TARGET]["peak_kib"] / peaks[REFERENCE.name]["peak_kib"]
        rows.append((f"W4 peak RSS <= {PEAK_RSS_TARGET}x NumPy", _ratio(ratio),
                     _verdict(ratio <= PEAK_RSS_TARGET), memory.get("peak_setting", "")))
    growth = memory.get("growth")
    if growth:
        limit = GROWTH_BYTES_PER_STEP * growth["steps"]
        held = growth["traced_growth_bytes"]
        rows.append((f"W1 no growth over {growth['steps']:,} steps (< {limit:,} B)", f"{held:,} B",
                     _verdict(held < limit), "float64"))
        cycles = growth["cyclic_objects_per_step"]
        rows.append(("W1 no reference cycles", f"{cycles:g} objects/step", _verdict(cycles == 0), "float64"))
    return rows


def memory_lines(memory: dict[str, Any]) -> list[str]:
    """Markdown for the peak RSS and growth measurements."""
    lines = []
    peaks = memory.get("peak", {})
    if peaks:
        setting = memory.get("peak_setting", "")
        lines += [f"Peak RSS of a W4 training run ({setting}), each in its own process:",
                  "", "| implementation | after setup (MiB) | peak (MiB) | training added (MiB) |",
                  "|---|---:|---:|---:|"]
        for name, peak in peaks.items():
            added = peak["peak_kib"] - peak["setup_kib"]
            lines.append(f"| {_label(name)} | {peak['setup_kib'] / 1024:.1f} | {peak['peak_kib'] / 1024:.1f} "
                         f"| {added / 1024:.1f} |")
    growth = memory.get("growth")
    if growth:
        lines += ["", f"{_label(growth['implementation'])}, W1, {growth['steps']:,} steps after a warm-up: "
                  f"{growth['traced_growth_bytes']:,} bytes still allocated (tracemalloc), RSS changed by "
                  f"{growth['rss_growth_kib']:,} KiB; {growth['cyclic_objects_per_step']:g} objects per step "
                  "left for the cycle collector."]
    return lines


# -- command line -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``microtensor bench``: check and time the workloads here, print a markdown table.

    Returns 1 when an implementation disagrees with the NumPy reference, else 0.
    """
    parser = argparse.ArgumentParser(prog="microtensor bench", description=main.__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full rounds (default: a quick run)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: as is)")
    parser.add_argument("--dtypes", nargs="+", default=["float64"], choices=sorted(TOLERANCE))
    parser.add_argument("--workloads", nargs="+", default=[w.name for w in WORKLOADS],
                        choices=[w.name for w in WORKLOADS])
    parser.add_argument("--implementations", nargs="+", default=None, choices=list(IMPLEMENTATIONS))
    args = parser.parse_args(argv)
    settings = FULL if args.full else QUICK
    workloads = [w for w in WORKLOADS if w.name in args.workloads]
    report = run(workloads, args.dtypes, args.threads, args.implementations, **settings)
    print(render([report]))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
