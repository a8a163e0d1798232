"""How fast a tape can be in Python: a throwaway tape for ReLU MLPs, timed against microtensor.

    python benchmarks/ceiling.py [--workloads W1 W3] [--dtype float64] [--threads 1] [--rounds 15]

The tape below records each op as it runs and replays it in reverse, like microtensor, but
knows only what an MLP step needs: three ops, one backward function per op that returns
every input's gradient at once, plain modules, and the update ``nn.optim.SGD`` makes (BLAS
``axpy``). It has none of microtensor's generality or checks (no shapes, dtypes or labels
checked, no in-place change detection, no scopes for pictures, no create_graph, no anomaly
hooks, and a softmax shifted by the largest logit only, which is not safe for logits far
apart). Its step is
checked against the NumPy reference before timing, like every implementation in
``nn/bench``; the ratio to it is what microtensor's generality costs on each workload.
Each cell is the step time over the NumPy step's, and in brackets over the matmuls' alone.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy

from nn import bench  # noqa: E402
from nn.optim import _subtract_scaled  # noqa: E402

_positions = itertools.count()


class Value:
    """An array, its gradient and the op that made it: ``(backward, inputs, saved)``."""

    __slots__ = ("data", "grad", "op", "position")

    def __init__(self, data: np.ndarray, op: tuple | None = None) -> None:
        self.data, self.grad, self.op, self.position = data, None, op, next(_positions)


def _data(x: Any) -> np.ndarray:
    return x.data if isinstance(x, Value) else x


def _linear_backward(g: np.ndarray, x: Any, w: Value, b: Value, ones: np.ndarray) -> tuple:
    dx = g @ w.data.T if isinstance(x, Value) else None
    return dx, _data(x).T @ g, ones @ g


def linear(x: Any, w: Value, b: Value) -> Value:
    out = _data(x) @ w.data
    out += b.data
    return Value(out, (_linear_backward, (x, w, b), np.ones(len(out), out.dtype)))


def _relu_backward(g: np.ndarray, x: Value, saved: None) -> tuple:
    return (g * (x.data > 0),)


def relu(x: Value) -> Value:
    return Value(np.maximum(x.data, 0), (_relu_backward, (x,), None))


def _cross_entropy_backward(g: Any, logits: Value, saved: tuple) -> tuple:
    logp, labelled = saved
    grad = np.exp(logp)
    grad.reshape(-1)[labelled] -= 1
    grad *= g / len(grad)
    return (grad,)


def cross_entropy(logits: Value, y: np.ndarray) -> Value:
    shifted = logits.data - logits.data.max()
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    labelled = np.arange(0, logp.size, logp.shape[1]) + y
    loss = -logp.reshape(-1)[labelled].sum() / len(logp)
    return Value(loss, (_cross_entropy_backward, (logits,), (logp, labelled)))


def backward(loss: Value) -> None:
    """Leaf gradients of ``loss``: ops replayed latest first, each once its output's gradient is whole."""
    grads = {id(loss): 1.0}
    pending = [(-loss.position, loss)]
    while pending:
        _, value = heapq.heappop(pending)
        step_backward, inputs, saved = value.op
        for x, gx in zip(inputs, step_backward(grads.pop(id(value)), *inputs, saved)):
            if gx is None:
                continue
            if x.op is None:
                x.grad = gx if x.grad is None else x.grad + gx
            elif id(x) in grads:
                grads[id(x)] = grads[id(x)] + gx
            else:
                grads[id(x)] = gx
                heapq.heappush(pending, (-x.position, x))


class Linear:
    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight, self.bias = Value(weight.copy()), Value(bias.copy())

    def __call__(self, x: Any) -> Value:
        return linear(x, self.weight, self.bias)


class CeilingTape:
    """A ReLU MLP on the throwaway tape, trained with plain SGD: a ``Trainer`` for ``nn.bench``."""

    def __init__(self, problem: bench.Problem) -> None:
        self.X, self.y, self.lr = problem.X, problem.y, problem.lr
        self.layers = [Linear(w, b) for w, b in zip(problem.weights[0::2], problem.weights[1::2])]
        self.params = [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def step(self) -> Any:
        for p in self.params:
            p.grad = None
        h = self.layers[0](self.X)
        for layer in self.layers[1:]:
            h = layer(relu(h))
        loss = cross_entropy(h, self.y)
        backward(loss)
        for p in self.params:  # the same update as microtensor's
            _subtract_scaled(p.data, p.grad, self.lr)
        return loss.data

    def gradients(self) -> list[np.ndarray] | None:
        return [p.grad for p in self.params]

    def weights(self) -> list[np.ndarray] | None:
        return [p.data for p in self.params]


CEILING = bench.Implementation("ceiling", "throwaway tape", CeilingTape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3"])
    args = bench.add_experiment_arguments(parser, rounds=15).parse_args(argv)
    bench.pin_allocator()
    bench.set_threads(args.threads)
    workloads = {w.name: w for w in bench.WORKLOADS}
    implementations = [bench.REFERENCE, bench.FLOOR, bench.IMPLEMENTATIONS[bench.TARGET], CEILING]
    print("| workload | microtensor nn+optim | throwaway tape |\n|---|---:|---:|")
    agreed = True
    for name in args.workloads:
        results = {r.implementation: r for r in bench.bench_workload(
            workloads[name], args.dtype, implementations, args.rounds, args.block)}
        agreed = agreed and all(r.agrees is not False for r in results.values())
        cells = [f"{r.ratio:.2f}x ({r.floor_ratio:.2f}x)" if r.ratio is not None else r.check for r in
                 (results[bench.TARGET], results[CEILING.name])]
        print(f"| {workloads[name].label} | " + " | ".join(cells) + " |")
    print(f"\nstep time / NumPy step time (/ matmuls only), {args.dtype}, {args.threads} thread(s), "
          f"median of {args.rounds} rounds")
    return 0 if agreed else 1


if __name__ == "__main__":
    sys.exit(main())
