"""Shared test helpers: an independent finite-difference reference and torch, if present."""

from __future__ import annotations

import numpy as np
import pytest


def numeric_vjp(reference, arrays, upstream, eps=1e-6):
    """Central differences of sum(reference(*arrays) * upstream) for each array.

    ``reference`` is plain NumPy, independent of the engine's own forward.
    """
    grads = []
    for k, base in enumerate(arrays):
        base = np.asarray(base, dtype=np.float64)
        g = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            shifted = [np.array(a, dtype=np.float64, copy=True) for a in arrays]
            shifted[k][idx] = base[idx] + eps
            plus = np.sum(reference(*shifted) * upstream)
            shifted[k][idx] = base[idx] - eps
            minus = np.sum(reference(*shifted) * upstream)
            g[idx] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


@pytest.fixture
def rng():
    return np.random.default_rng(0)


try:
    import torch
except ImportError:  # the comparison tests skip cleanly without torch
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
