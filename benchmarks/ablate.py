"""What each piece of microtensor's training step costs, measured inside the step.

    python benchmarks/ablate.py [--workload W1] [--dtype float64] [--rounds 21]

Each variant is the ``nn`` step the targets are about (model, ``cross_entropy``, ``SGD``) with
one piece replaced by a stand-in that does only its arithmetic: backward as a bare loop over
the recorded nodes, the update as one ``axpy`` per weight, modules called without their
scopes. Two more put one of backward's features back into the bare loop, so the difference
is that feature's cost. The stand-ins drop checks on purpose: they measure what the checks
cost, and are not a faster mode of microtensor.

The variants and the step as it is run in one process, interleaved in rounds, after each
variant's first step was checked against the NumPy reference. A row is the median over
rounds of variant / step as it is, with a 95% interval of that median; one minus it is the
share of the step the piece costs. Timed alone with ``timeit``, the same pieces look two to
three times cheaper than they are inside a step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy

import microtensor as mt  # noqa: E402
from nn import bench, functional  # noqa: E402
from nn.optim import _axpy  # noqa: E402

Backward = Callable[[mt.Tensor], None]


def bare_backward(loss: mt.Tensor, quiet: bool = False, shapes: bool = False) -> None:
    """The loss's leaf gradients by the recorded VJPs and nothing else: no checks, no copies,
    latest node first. ``quiet`` puts back backward's ``np.errstate``, ``shapes`` its check
    that each gradient has its input's shape."""
    if quiet:
        with np.errstate(all="ignore"):
            return bare_backward(loss, shapes=shapes)
    grads = {id(loss): np.ones(())}
    pending, leaves = [loss], []
    while pending:
        t = pending.pop()  # an MLP's tape is a chain: the latest pending node is the next one
        node = t._node
        args = (grads.pop(id(t)), t._data, *node.arrays)
        for vjp, a in zip(node.op.vjps, node.inputs):
            if isinstance(a, mt.Tensor) and a.requires_grad:
                grad = vjp(*args, **node.first_order_params())
                if shapes and grad.shape != a._data.shape:
                    raise ValueError("a VJP's gradient does not have its input's shape")
                grads[id(a)] = grad
                (pending if a._node is not None else leaves).append(a)
    for leaf in leaves:
        leaf.grad = grads[id(leaf)]


def axpy_update(optimizer: Any) -> None:
    """Plain SGD as one BLAS ``axpy`` per weight, and nothing else."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            data = p.data
            _axpy(data.dtype.char)(p.grad.ravel(), data.ravel(), data.size, -group["lr"])
            p.data = data


def _call_without_scope(module: Any, *args: Any, **kwargs: Any) -> Any:
    return module.forward(*args, **kwargs)


def _without_scopes(model: Any) -> None:
    """Call every module of ``model`` straight through to its ``forward``, with no scope."""
    for module in {id(m): m for _, m in model.named_modules()}.values():
        cls = type(module)
        module.__class__ = type(cls.__name__, (cls,), {"__call__": _call_without_scope})


class Variant(bench.MicrotensorNN):
    """The ``nn`` step with some of its pieces replaced by stand-ins."""

    def __init__(self, problem: bench.Problem, backward: Backward | None = None,
                 update: Callable[[Any], None] | None = None, scopes: bool = True) -> None:
        super().__init__(problem)
        self.backward = backward or (lambda loss: loss.backward())
        self.update = update or (lambda optimizer: optimizer.step())
        if not scopes:
            _without_scopes(self.model)

    def step(self) -> Any:
        self.optimizer.zero_grad()
        loss = functional.cross_entropy(self.model(self.X), self.y)
        self.backward(loss)
        self.update(self.optimizer)
        return loss


VARIANTS: dict[str, dict[str, Any]] = {
    "backward's bookkeeping (a bare loop instead)": dict(backward=bare_backward),
    "... the bare loop with np.errstate put back": dict(backward=partial(bare_backward, quiet=True)),
    "... the bare loop with the shape check put back": dict(backward=partial(bare_backward, shapes=True)),
    "the update's generality (one axpy per weight instead)": dict(update=axpy_update),
    "module scopes": dict(scopes=False),
    "all three": dict(backward=bare_backward, update=axpy_update, scopes=False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="W1", choices=[w.name for w in bench.WORKLOADS])
    args = bench.add_experiment_arguments(parser, rounds=21).parse_args(argv)
    bench.pin_allocator()
    bench.set_threads(args.threads)
    workload = {w.name: w for w in bench.WORKLOADS}[args.workload]
    problem = bench.make_problem(workload, args.dtype)
    trainers: dict[str, bench.Trainer] = {"numpy": bench.NumpyStep(problem), "as is": Variant(problem)}
    trainers.update({name: Variant(problem, **pieces) for name, pieces in VARIANTS.items()})
    reference = bench.first_step(trainers["numpy"])
    for name, trainer in trainers.items():
        wrong = name != "numpy" and bench.disagreement(reference, bench.first_step(trainer),
                                                       bench.TOLERANCE[args.dtype])
        if wrong:
            print(f"{name}: DISAGREES with the NumPy reference: {wrong}")
            return 1
    times, _ = bench.interleave(trainers, args.rounds, args.block)
    as_is = times["as is"]

    def over(name: str, baseline: list[float]) -> list[float]:
        return [t / b for t, b in zip(times[name], baseline)]

    print(f"{workload.label}, {args.dtype}, {args.threads} thread(s), {args.rounds} rounds: the step as it "
          f"is takes {statistics.median(over('as is', times['numpy'])):.2f}x the NumPy step\n")
    print("| taken out of the step | variant / step as is | share of the step | variant / NumPy |")
    print("|---|---:|---:|---:|")
    for name in VARIANTS:
        ratios = over(name, as_is)
        interval = bench.median_interval(ratios)
        spread = f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "too few rounds for an interval"
        ratio = statistics.median(ratios)
        print(f"| {name} | {ratio:.3f} ({spread}) | {1 - ratio:.1%} | "
              f"{statistics.median(over(name, times['numpy'])):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
