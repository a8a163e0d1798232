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


def _check_not_empty(x: np.ndarray, where: str, what: str) -> None:
    if x.size == 0:
        raise ValueError(f"{where}: {what} of shape {np.shape(x)} are empty; a mean loss over no "
                         f"examples is undefined (check how the batch was sliced)")


def _target(y: Any, inputs: mt.Tensor, where: str, what: str) -> Any:
    """``y`` as int labels (N,) or rows of class probabilities (N, C), checked against (N, C).

    Probability rows that require grad stay a Tensor, so the loss differentiates them too.
    """
    _check_not_empty(inputs.data, where, what)
    target = _array(y)
    shape = inputs.shape
    if target.ndim == 1 and target.dtype.kind in "iu":
        if len(shape) != 2 or target.shape[0] != shape[0]:
            raise ValueError(f"{where}: labels of shape {target.shape} do not match {what} of "
                             f"shape {shape}; expected (N,) labels for (N, C) {what}")
        return target
    if len(shape) != 2 or target.shape != shape or target.dtype.kind not in "fiub":
        raise ValueError(f"{where}: targets of shape {target.shape} and dtype {target.dtype} do not "
                         f"match {what} of shape {shape}; pass int labels (N,) or one-hot (N, C)")
    if isinstance(y, mt.Tensor) and y.requires_grad:
        return y if y.dtype == inputs.dtype else y.astype(inputs.dtype)
    return target.astype(inputs.dtype, copy=False)


def nll_loss(logp: Any, y: Any) -> mt.Tensor:
    """Mean negative log-likelihood of log-probabilities ``logp`` (N, C).

    ``y`` is int labels of shape (N,) or one-hot / probability rows of shape (N, C);
    rows given as a Tensor that requires grad get the gradient ``-logp / N``.

    >>> logp = mt.Tensor(np.log([[0.5, 0.5], [0.25, 0.75]]))
    >>> round(nll_loss(logp, [0, 1]).item(), 4)
    0.4904
    """
    logp = logp if isinstance(logp, mt.Tensor) else mt.Tensor(logp)
    target = _target(y, logp, "nll_loss", "log-probs")
    if target.ndim == 1:
        wrong = target[(target < 0) | (target >= logp.shape[1])]
        if wrong.size:  # a negative label would silently index from the end
            raise IndexError(f"nll_loss: labels must be in [0, {logp.shape[1]}), got {wrong[0]}")
        return -logp[np.arange(target.shape[0]), target].mean()
    if isinstance(target, mt.Tensor):  # a learned target: d/dtarget is -logp / N in every class
        return -(logp * target).sum() / logp.shape[0]
    # Only the classes the target weighs: 0 * log(0) counts as 0, not nan, for ruled-out classes.
    weighed = np.nonzero(target)
    return -(logp[weighed] * target[weighed]).sum() / logp.shape[0]


def cross_entropy(logits: Any, y: Any) -> mt.Tensor:
    """Mean cross-entropy of ``logits`` (N, C) against int labels (N,) or one-hot (N, C).

    Equal to ``nll_loss(log_softmax(logits), y)`` and stable for large logits; recorded as
    one fused op, whose backward is ``(softmax(logits) - one_hot(y)) / N``. Labels outside
    ``[0, C)`` are an IndexError, raised by that op. Probability rows given as a Tensor that
    requires grad get the gradient ``-log_softmax(logits) / N``, as in PyTorch.

    >>> round(cross_entropy(np.zeros((3, 4)), np.array([0, 1, 2])).item(), 4)  # log(4)
    1.3863
    """
    logits = logits if isinstance(logits, mt.Tensor) else mt.Tensor(logits)
    if type(y) is np.ndarray and y.ndim == 1 and y.dtype.kind in "iu":
        # Labels, as a training loop passes them: the op checks them itself, so they are checked
        # here (for this function's wording) only once it refused them. That saves 3% of a small step.
        try:
            return mt.softmax_cross_entropy(logits, y)
        except ValueError:
            pass
    return mt.softmax_cross_entropy(logits, _target(y, logits, "cross_entropy", "logits"))


def mse_loss(pred: Any, target: Any) -> mt.Tensor:
    """Mean of ``(pred - target) ** 2`` over every element; shapes must match.

    >>> mse_loss(mt.Tensor([1.0, 3.0]), np.array([0.0, 0.0])).item()
    5.0
    """
    if np.shape(_array(pred)) != np.shape(_array(target)):
        raise ValueError(f"mse_loss: pred has shape {np.shape(_array(pred))} but target has shape "
                         f"{np.shape(_array(target))}; they must match")
    _check_not_empty(_array(pred), "mse_loss", "predictions")
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
