"""Backward through a long chain of ops: time and memory, measured in this process alone.

    python benchmarks/long_chain.py                  # 1,000,000 ops: ~3 s and ~0.7 GB
    python benchmarks/long_chain.py --ops 100000 --json

Records ``y = -y`` ``--ops`` times on a small vector, runs ``backward()``, and reports the
time to record and to differentiate, the resident memory the graph holds, the extra memory
backward needs at its peak, and whether dropping the output frees the whole graph. The
cycle collector is off throughout (which also makes recording twice as fast), so the graph
is freed by reference counting alone: no reference cycle holds it. Linux only (it reads
/proc/self/statm). tests/test_scale.py runs it with 1,000,000 ops.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
import weakref

import numpy as np

import microtensor as mt


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(ops: int, width: int = 8) -> dict:
    """Record and differentiate a chain of ``ops`` negations of a ``width``-vector."""
    gc.disable()
    x = mt.Tensor(np.ones(width), requires_grad=True)
    before = resident_bytes()
    start = time.perf_counter()
    y = x
    for i in range(ops):
        y = -y
        if i == ops // 2:  # an ndarray can be watched where a Tensor cannot: it dies with the graph
            middle = weakref.ref(y.data)
    recorded = time.perf_counter()
    graph = resident_bytes() - before
    y.sum().backward()
    done = time.perf_counter()
    backward_peak = peak_resident_bytes() - before - graph
    del y
    return {
        "ops": ops,
        "record_seconds": round(recorded - start, 3),
        "backward_seconds": round(done - recorded, 3),
        "graph_bytes": graph,
        "backward_extra_peak_bytes": max(backward_peak, 0),
        "graph_freed_without_gc": middle() is None,
        "gradient_correct": bool(np.all(x.grad == (-1.0) ** ops)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.ops)
    if args.json:
        print(json.dumps(result))
        return
    mib = 1024 * 1024
    print(f"{result['ops']:,} ops: recorded in {result['record_seconds']:.2f} s, backward in "
          f"{result['backward_seconds']:.2f} s")
    print(f"graph {result['graph_bytes'] / mib:.0f} MiB ({result['graph_bytes'] / result['ops']:.0f} B/op), "
          f"backward's extra peak {result['backward_extra_peak_bytes'] / mib:.0f} MiB")
    print(f"graph freed by reference counting alone: {result['graph_freed_without_gc']}; "
          f"gradient correct: {result['gradient_correct']}")


if __name__ == "__main__":
    main()
