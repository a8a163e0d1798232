"""Losses: cross-entropy from logits, negative log-likelihood, mean squared error, L2 penalty.

>>> import numpy as np
>>> import microtensor as mt
>>> logits = mt.Tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)
>>> round(cross_entropy(logits, np.array([0, 1])).item(), 4)
0.1269
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

import microtensor as mt


def _array(x: Any) -> np.ndarray:
    return x.data if isinstance(x, mt.Tensor) else np.asarray(x)


def nll_loss(logp: Any, y: Any) -> mt.Tensor:
    """Mean negative log-likelihood of log-probabilities ``logp`` (N, C).

    ``y`` is int labels of shape (N,) or one-hot / probability rows of shape (N, C).

    >>> logp = mt.Tensor(np.log([[0.5, 0.5], [0.25, 0.75]]))
    >>> round(nll_loss(logp, [0, 1]).item(), 4)
    0.4904
    """
    logp = logp if isinstance(logp, mt.Tensor) else mt.Tensor(logp)
    labels = _array(y)
    if labels.ndim == 1 and labels.dtype.kind in "iu":
        if logp.ndim != 2 or labels.shape[0] != logp.shape[0]:
            raise ValueError(f"nll_loss: labels of shape {labels.shape} do not match log-probs of "
                             f"shape {logp.shape}; expected (N,) labels for (N, C) log-probs")
        if labels.size and labels.min() < 0:  # a negative label would silently index from the end
            raise ValueError(f"nll_loss: labels must be in [0, {logp.shape[1]}), got {labels.min()}")
        return -logp[np.arange(labels.shape[0]), labels].mean()
    if labels.shape != logp.shape or labels.dtype.kind not in "fiub":
        raise ValueError(f"nll_loss: targets of shape {labels.shape} and dtype {labels.dtype} do not "
                         f"match log-probs of shape {logp.shape}; pass int labels (N,) or one-hot (N, C)")
    return -(logp * labels.astype(logp.dtype, copy=False)).sum() / logp.shape[0]


def cross_entropy(logits: Any, y: Any) -> mt.Tensor:
    """Mean cross-entropy of ``logits`` (N, C) against int labels (N,) or one-hot (N, C).

    Computed as ``nll_loss(log_softmax(logits), y)``, stable for large logits.

    >>> round(cross_entropy(np.zeros((3, 4)), np.array([0, 1, 2])).item(), 4)  # log(4)
    1.3863
    """
    return nll_loss(mt.log_softmax(logits, axis=-1), y)


def mse_loss(pred: Any, target: Any) -> mt.Tensor:
    """Mean of ``(pred - target) ** 2`` over every element; shapes must match.

    >>> mse_loss(mt.Tensor([1.0, 3.0]), np.array([0.0, 0.0])).item()
    5.0
    """
    if np.shape(_array(pred)) != np.shape(_array(target)):
        raise ValueError(f"mse_loss: pred has shape {np.shape(_array(pred))} but target has shape "
                         f"{np.shape(_array(target))}; they must match")
    diff = mt.sub(pred, target)
    return (diff * diff).mean()


def l2_penalty(weights: Iterable[mt.Tensor], reg: float) -> mt.Tensor:
    """``0.5 * reg * sum(W ** 2)`` over the given weights (the notebooks' L2; gradient ``reg * W``).

    >>> W = mt.Tensor([[1.0, 2.0]], requires_grad=True)
    >>> l2_penalty([W], reg=0.1).item()
    0.25
    """
    total: Any = 0.0
    for w in weights:
        total = (w * w).sum() + total
    return mt.mul(0.5 * reg, total)
