"""Memory: peak RSS of a training run, and what stays allocated (or cyclic) over many steps."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

from nn.bench.steps import Implementation, Trainer, implementation
from nn.bench.system import in_fresh_process
from nn.bench.workloads import Workload, make_problem


def _peak_rss_kib() -> int:
    import resource  # POSIX only: imported here, so that importing nn.bench works everywhere

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def peak_rss(impl: str | Implementation, workload: Workload, dtype: str, steps: int) -> dict[str, Any]:
    """RSS held after setup and peak RSS after ``steps`` training steps (KiB), in a fresh process.

    Setup may peak higher than it holds (a model draws its own weights before ours are
    loaded), so the baseline is the RSS held after setup, not the peak so far.

    >>> peak_rss("numpy", Workload("tiny", (3, 4, 2), 5), "float64", 2)["peak_kib"] > 0
    True
    """
    impl = implementation(impl)
    trainer = impl.make(make_problem(workload, dtype))
    gc.collect()
    setup = _current_rss_kib()
    for _ in range(steps):
        trainer.step()
    return {"implementation": impl.name, "setup_kib": setup, "peak_kib": _peak_rss_kib()}


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
