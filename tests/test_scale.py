"""Scale: backward through a million-op chain needs no recursion and bounded memory; training
does not grow memory; reference counting alone frees every graph (no cycles)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

import nn
from microtensor import Tensor
from nn import functional as F

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_cycle_collector():
    """Only reference counting frees memory here, so anything a cycle holds stays visible."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def traced(run):
    """Bytes ``run()`` allocated at its peak, and bytes still allocated after it (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
        left, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, left


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures resident memory through /proc")
def test_backward_through_a_million_op_chain_completes_in_bounded_memory_and_frees_the_graph():
    # In a fresh process (benchmarks/long_chain.py), so the resident memory is this chain's alone.
    # An odd number of negations: a sign-flipped neg derivative gives +1 instead of -1.
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "long_chain.py"), "--json",
                          "--ops", "1000001"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["ops"] == 1_000_001 and result["gradient_correct"]
    assert result["graph_bytes"] / result["ops"] < 2000  # a bounded cost per recorded op
    assert result["backward_extra_peak_bytes"] < 0.5 * result["graph_bytes"]
    assert result["graph_freed_without_gc"]


def test_backward_through_a_long_chain_keeps_no_per_op_gradient_or_bookkeeping(no_cycle_collector):
    ops = 50_000
    x = Tensor(np.ones(64), requires_grad=True)
    y = x
    for _ in range(ops):
        y = y * 1.0
    loss = y.sum()
    peak, left = traced(loss.backward)
    # Walking the graph costs some bookkeeping per op; holding each op's 64-float gradient
    # until the end would cost over 600 bytes per op more.
    assert peak < 300 * ops
    # Left behind: x.grad, and the freed tuples CPython keeps for reuse (up to 2,000 of a size);
    # keeping even one small object per op would be 50 bytes per op or more.
    assert left < 4 * ops
    np.testing.assert_array_equal(x.grad, np.ones(64))


def test_dropping_the_output_frees_the_graph_without_the_cycle_collector(no_cycle_collector):
    x = Tensor(np.ones(3), requires_grad=True)
    h = (x * 2.0).relu()
    watched = weakref.ref(h.data)
    loss = F.mse_loss(h.exp() @ np.ones((3, 2)), np.zeros(2))
    loss.backward()
    del h, loss
    assert watched() is None


def test_backward_releases_what_an_op_saved_for_it_even_while_the_loss_is_kept():
    logits = Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 1, 2, 0]))
    saved = weakref.ref(loss._node.saved[0])  # the fused op keeps its log-probabilities for backward
    loss.backward()
    assert saved() is None


def test_memory_does_not_grow_over_10_000_training_steps(no_cycle_collector):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    model = nn.TwoLayerNet(4, 8, 3, seed=0)
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    old_losses = []

    def step() -> float:
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        if len(old_losses) < 100:
            old_losses.append(weakref.ref(loss.data))
        return loss.item()

    first = step()
    tracemalloc.start()
    try:
        for _ in range(1_000):  # optimizer state and NumPy's caches settle here
            step()
        settled = tracemalloc.take_snapshot()
        for _ in range(9_000):
            last = step()
        grown = tracemalloc.take_snapshot().compare_to(settled, "filename")
    finally:
        tracemalloc.stop()
    ours = [stat for stat in grown if "tracemalloc" not in str(stat.traceback)]
    assert sum(stat.size_diff for stat in ours) < 16 * 1024  # keeping each graph would be ~3.6 KB a step
    assert all(watched() is None for watched in old_losses)  # freed by reference counting alone
    assert gc.collect() == 0  # and nothing was left for the cycle collector
    assert last < first  # it did train
