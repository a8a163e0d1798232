"""The machine and its threads: what the numbers belong to, and fresh processes to measure in."""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# mallopt's parameter numbers in glibc's malloc.h, and the largest mmap threshold it takes on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_KEEP_FREED = 1 << 30  # trim the heap only when this much lies free at its top: in effect never
_allocator = "as found"


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
        threadpool_limits(limits=threads)  # the pools already loaded, NumPy's and SciPy's OpenBLAS
        method = "threadpoolctl"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return {"requested": threads, "method": method, **_threads_in_effect()}


def pin_allocator() -> str:
    """Make glibc's malloc keep freed memory for the next step; return how the allocator is set.

    By default glibc gives a large freed block back to the system (unmapped, or trimmed off
    the heap) once its adaptive thresholds say so, and the next step faults every page of
    it in again. Whether that happens depends on what the process did before, so a step's
    time moved by up to 30% from run to run. With blocks of up to 32 MiB kept on the heap
    and the heap never trimmed, no step of any implementation faults, and the ratios
    compare arithmetic, not the allocator's state. It applies to this whole process, so
    only the benchmark calls it; elsewhere than glibc it changes nothing.
    """
    global _allocator
    if platform.libc_ver()[0] != "glibc":
        return _allocator
    mallopt = ctypes.CDLL(None).mallopt
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED):
        _allocator = (f"glibc malloc, pinned by the benchmark: blocks up to {_MMAP_THRESHOLD_MAX >> 20} MiB "
                      f"from the heap, which is never trimmed")
    return _allocator


def allocator() -> str:
    """How this process's allocator is set: "as found", or what :func:`pin_allocator` did."""
    return _allocator


def _owner(library: str) -> str:
    """Which package ships a thread pool's library: numpy and scipy each bring their own OpenBLAS.

    >>> _owner("/site-packages/scipy.libs/libscipy_openblas.so"), _owner("/x/torch/lib/libgomp.so.1")
    ('scipy', 'torch')
    """
    folder = Path(library).parent
    return folder.parent.name if folder.name == "lib" else folder.name.removesuffix(".libs")


def _threads_in_effect() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    found: dict[str, Any] = {"torch": None if torch is None else torch.get_num_threads()}
    found["pools"] = {f"{p['internal_api']} ({_owner(p['filepath'])})": p["num_threads"]
                      for p in threadpool_info()}
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


def _blas(package: str) -> str:
    """The BLAS library ``package`` (numpy, or scipy for SGD's ``axpy``) loaded, with its version."""
    for pool in threadpool_info():
        if pool["user_api"] == "blas" and f"{package}." in pool["filepath"]:
            return f"{pool['internal_api']} {pool['version']} ({pool['architecture']})"
    config = importlib.import_module(package).show_config(mode="dicts")
    blas = config["Build Dependencies"]["blas"]
    return f"{blas.get('name')} {blas.get('version')}"


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, str]:
    """The CPU, core count and library versions the numbers belong to."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy BLAS": _blas("numpy"),
        "scipy": _version("scipy"),
        "scipy BLAS": _blas("scipy"),
        "torch": _version("torch"),
        "torch BLAS": _torch_blas(),
        "scikit-learn": _version("scikit-learn"),
    }


def _torch_blas() -> str:
    """The BLAS torch was built with (MKL on x86 wheels): its products are not OpenBLAS's."""
    torch = sys.modules.get("torch")
    if torch is None:
        return "not loaded"
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def in_fresh_process(call: str, threads: int | None = None) -> Any:
    """Evaluate ``call`` (with ``b`` standing for ``nn.bench``) in a new Python; return its JSON.

    The new process imports this checkout's packages, and its thread variables are set
    to ``threads`` before any library loads.

    >>> in_fresh_process("b.WORKLOADS[0].sizes")
    [2, 32, 2]
    """
    root = str(Path(__file__).resolve().parents[2])  # the directory holding nn/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env.update({variable: str(threads) for variable in THREAD_VARIABLES})
    code = f"import json, nn.bench as b; print(json.dumps({call}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench: {call} failed in a fresh process:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])
