"""Checking every implementation's first step against the reference, then timing them interleaved."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import microtensor as mt
from nn.bench.report import Result
from nn.bench.steps import FLOOR, REFERENCE, Implementation, Trainer, microtensor_loss
from nn.bench.workloads import TOOLS_WORKLOAD, Workload, make_problem, parameter_names

# Relative error allowed between an implementation's first step and the reference's.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


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
        if len(theirs) != len(ours):  # zip would stop at the shorter list and compare too little
            return f"{what}: {len(theirs)} arrays, expected {len(ours)}"
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


def _time_block(trainer: Trainer, steps: int) -> float:
    """Seconds per step over a block of ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return (time.perf_counter() - start) / steps


def _steps_per_block(trainer: Trainer, block_seconds: float) -> int:
    """How many steps fill about ``block_seconds``, measured on doubling blocks after a warm-up."""
    if _time_block(trainer, 1) >= block_seconds:  # a warm-up: first calls may build caches
        return 1
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


def median_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """A confidence interval of at least 95% for the median of what ``values`` sample.

    Distribution-free: the k-th smallest and k-th largest value, for the largest k with
    P(Binomial(n, 1/2) < k) <= 2.5%. Six to eight values give their whole range; fewer than
    six give None, as even their whole range holds the median less often than 95% (5 values:
    93.75%), and a quick run's verdicts then follow the median alone.

    >>> median_interval(range(1, 16))  # 15 rounds: the 4th smallest and the 4th largest
    (4, 12)
    >>> median_interval([1.0, 2.0, 3.0]) is None
    True
    """
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0  # below becomes P(Binomial(n, 1/2) <= k)
    while True:
        below += math.comb(n, k) / 2 ** n
        if below > 0.025:
            break
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)  # a list, as JSON gives it back


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
            result.ratio_interval = _listed(median_interval(ratios))
            if FLOOR.name in times:
                floor_ratios = _paired_ratios(times[name], times[FLOOR.name])
                result.floor_ratio = statistics.median(floor_ratios)
                result.floor_interval = _listed(median_interval(floor_ratios))
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


def _median_seconds(action: Callable[[], Any], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _passed(report: Any) -> Any:
    """``report``, once it says the gradients are right: a check that finds fault is no timing."""
    if not report:
        raise ValueError(f"it reports wrong gradients: {report!r}")
    return report


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
        "gradcheck": lambda: _passed(mt.gradcheck(loss_of, params)),
        "draw_graph": lambda: mt.draw_graph(loss).source,
    }
    timings: dict[str, float | str] = {}
    for name, action in tools.items():
        try:
            timings[name] = _median_seconds(action, repeats)
        except Exception as err:  # any failure is itself the finding
            timings[name] = f"failed: {type(err).__name__}: {err}"
    return timings
