"""Benchmark harness: a training step of microtensor against a hand-written NumPy step.

A workload is an MLP shape and a batch size (:mod:`nn.bench.workloads`). Every
implementation of one training step (:mod:`nn.bench.steps`: forward, softmax cross-entropy
averaged over the batch, backward, SGD update) starts from the same weights and data.
Before timing, each one's first step is checked against the NumPy reference (loss,
gradients, weights after the update); then all of them run interleaved in rounds
(:mod:`nn.bench.timing`), and each is reported as the median of its per-round ratios to
the reference (:mod:`nn.bench.report`). :mod:`nn.bench.memory` measures peak RSS and
growth; :mod:`nn.bench.system` sets and reports threads.

``microtensor bench`` (:func:`main`) runs a quick version in this process;
``python benchmarks/run.py`` runs the full one per thread setting and writes
``docs/performance.md``.

>>> report = run([Workload("tiny", (3, 4, 2), 5)], implementations=["numpy", "microtensor"],
...              rounds=2, block_seconds=0.001)
>>> [(r.implementation, r.agrees) for r in report.results]
[('numpy', None), ('microtensor', True)]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nn.arguments import positive_int
from nn.bench.memory import (
    memory_growth,
    memory_growth_in_fresh_process,
    peak_rss,
    peak_rss_in_fresh_process,
)
from nn.bench.report import Report, Result, memory_targets, render, speed_targets, tool_targets
from nn.bench.steps import (
    FLOOR,
    IMPLEMENTATIONS,
    REFERENCE,
    TARGET,
    Implementation,
    MatmulFloor,
    MicrotensorNN,
    MicrotensorTensors,
    NumpyStep,
    SklearnMLP,
    TorchEager,
    TorchNN,
    Trainer,
    matmul_operands,
    microtensor_loss,
    resolve,
)
from nn.bench.system import allocator, in_fresh_process, load_average, machine, pin_allocator, set_threads
from nn.bench.timing import (
    TOLERANCE,
    bench_workload,
    disagreement,
    first_step,
    interleave,
    median_interval,
    time_tools,
)
from nn.bench.workloads import TOOLS_WORKLOAD, WORKLOADS, Problem, Workload, make_problem

__all__ = [
    "run", "main", "add_arguments", "run_command", "add_experiment_arguments", "DESCRIPTION", "QUICK", "FULL",
    "Workload", "WORKLOADS", "TOOLS_WORKLOAD", "Problem", "make_problem",
    "Trainer", "Implementation", "IMPLEMENTATIONS", "REFERENCE", "FLOOR", "TARGET", "resolve",
    "NumpyStep", "MatmulFloor", "MicrotensorTensors", "MicrotensorNN", "TorchEager", "TorchNN",
    "SklearnMLP", "matmul_operands", "microtensor_loss",
    "TOLERANCE", "first_step", "disagreement", "interleave", "bench_workload", "time_tools",
    "median_interval",
    "Report", "Result", "render", "speed_targets", "tool_targets", "memory_targets",
    "peak_rss", "peak_rss_in_fresh_process", "memory_growth", "memory_growth_in_fresh_process",
    "machine", "set_threads", "pin_allocator", "allocator", "in_fresh_process",
]

QUICK = {"rounds": 3, "block_seconds": 0.01}
FULL = {"rounds": 15, "block_seconds": 0.05}


def run(workloads: Sequence[Workload] = WORKLOADS, dtypes: Sequence[str] = ("float64",),
        threads: int | None = None, implementations: Sequence[str | Implementation] | None = None,
        rounds: int = QUICK["rounds"], block_seconds: float = QUICK["block_seconds"],
        pin: bool = False) -> Report:
    """Check, then time, every implementation on every workload and dtype, in this process.

    ``implementations``: names from ``IMPLEMENTATIONS`` or :class:`Implementation` objects;
    the NumPy reference always runs. ``threads`` limits BLAS and torch (None: as found).
    ``pin`` sets this process's allocator with :func:`pin_allocator` first.
    """
    ready, skipped = resolve(implementations)
    import scipy.linalg.blas  # noqa: F401  SGD's BLAS, loaded before the threads are set so they cover it
    if pin:
        pin_allocator()
    settings = {"rounds": rounds, "block_seconds": block_seconds, "allocator": allocator()}
    report = Report(machine(), set_threads(threads), settings,
                    [w.name for w in workloads], {w.name: w.label for w in workloads}, skipped=skipped,
                    load=[load_average()])
    for dtype in dtypes:
        for workload in workloads:
            report.results += bench_workload(workload, dtype, ready, rounds, block_seconds)
    report.tools = time_tools()
    report.load.append(load_average())
    return report


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``microtensor bench``, added to ``parser``."""
    parser.add_argument("--full", action="store_true", help="full rounds (default: a quick run)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="BLAS and torch threads (default: as is)")
    parser.add_argument("--dtypes", nargs="+", default=["float64"], choices=sorted(TOLERANCE))
    parser.add_argument("--workloads", nargs="+", default=[w.name for w in WORKLOADS],
                        choices=[w.name for w in WORKLOADS])
    parser.add_argument("--implementations", nargs="+", default=None, choices=list(IMPLEMENTATIONS))
    return parser


def add_experiment_arguments(parser: argparse.ArgumentParser, rounds: int) -> argparse.ArgumentParser:
    """The options every timing script in ``benchmarks/`` shares, added to ``parser``: ``--dtype``,
    ``--threads``, ``--rounds`` (``rounds`` by default) and ``--block`` (seconds per block).

    >>> add_experiment_arguments(argparse.ArgumentParser(), rounds=15).parse_args(["--rounds", "3"]).rounds
    3
    """
    parser.add_argument("--dtype", default="float64", choices=sorted(TOLERANCE))
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--rounds", type=positive_int, default=rounds)
    parser.add_argument("--block", type=float, default=0.05, help="seconds per block")
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run ``microtensor bench`` with parsed ``args``; 1 when an implementation disagrees, else 0."""
    settings = FULL if args.full else QUICK
    workloads = [w for w in WORKLOADS if w.name in args.workloads]
    report = run(workloads, args.dtypes, args.threads, args.implementations, **settings, pin=True)
    print(render([report]))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``microtensor bench``: check and time the workloads here, print a markdown table.

    Returns 1 when an implementation disagrees with the NumPy reference, else 0.
    """
    parser = add_arguments(argparse.ArgumentParser(
        prog="microtensor bench", description=DESCRIPTION))
    return run_command(parser.parse_args(argv))


DESCRIPTION = ("Check one training step of each implementation against a hand-written NumPy step, "
               "time them interleaved, and print the ratios as a markdown table.")
