"""Training helpers: ``fit`` (minibatch training with a per-epoch history), ``evaluate``, ``predict``.

>>> import nn
>>> X, y = nn.data.make_blobs(n_per_class=50, seed=0)
>>> model = nn.TwoLayerNet(2, 8, 2, seed=0)
>>> history = fit(model, X, y, epochs=3, batch_size=16, lr=0.1, seed=0, progress=False)
>>> len(history.loss), history.accuracy[-1] > 0.9
(3, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import microtensor as mt
from nn import functional as F
from nn.arguments import check_positive_int
from nn.data import DataLoader
from nn.module import Module
from nn.optim import SGD, LRScheduler, Optimizer

Loss = Callable[[mt.Tensor, Any], mt.Tensor]
AUTO_PROGRESS_AFTER = 5.0  # seconds: runs longer than this print a line per epoch by default


@dataclass
class History:
    """Per-epoch records of a ``fit`` run; ``accuracy`` lists stay empty for non-class targets.

    ``loss``/``accuracy`` are averaged over the epoch's minibatches as they were trained;
    ``val_loss``/``val_accuracy`` are measured after the epoch, in eval mode.
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time since the start, at each epoch's end

    def line(self, epoch: int, epochs: int) -> str:
        """One readable line for ``epoch`` (0-based), as printed during training."""
        parts = [f"epoch {epoch + 1}/{epochs}", f"loss {self.loss[epoch]:.4f}"]
        optional = [("acc", self.accuracy), ("val_loss", self.val_loss), ("val_acc", self.val_accuracy)]
        for name, values in optional:
            if values:
                parts.append(f"{name} {values[epoch]:.4f}")
        parts += [f"lr {self.lr[epoch]:.3g}", f"{self.seconds[epoch]:.1f}s"]
        return "  ".join(parts)


def class_labels(y: Any) -> np.ndarray | None:
    """Int labels of classification targets (labels as given, or argmax of one-hot rows); else None.

    >>> class_labels(np.array([[0, 1], [1, 0]])), class_labels(np.array([0.5, 2.0]))
    (array([1, 0]), None)
    """
    y = y.data if isinstance(y, mt.Tensor) else np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iu":
        return y
    if y.ndim == 2 and y.dtype.kind in "fiub" and np.all(y.sum(axis=1) == 1):
        return y.argmax(axis=1)
    return None


def outputs(model: Module, X: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs for ``X`` as an ndarray, in eval mode and without recording.

    The model's training mode is restored afterwards.

    >>> import nn
    >>> outputs(nn.TwoLayerNet(2, 3, 4, seed=0), np.zeros((5, 2), np.float32)).shape
    (5, 4)
    """
    X = X.data if isinstance(X, mt.Tensor) else np.asarray(X)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with mt.no_grad():
            step = batch_size or max(len(X), 1)
            return np.concatenate([model(X[i:i + step]).data for i in range(0, max(len(X), 1), step)])
    finally:
        for module, mode in modes:
            module.training = mode


def evaluate(model: Module, X: Any, y: Any, *, loss: Loss = F.cross_entropy,
             batch_size: int | None = None) -> dict[str, float]:
    """``{"loss": ..., "accuracy": ...}`` of the model on ``(X, y)`` in eval mode (no accuracy
    for targets that are not classes).

    >>> import nn
    >>> X, y = nn.data.make_blobs(n_per_class=20, seed=0)
    >>> sorted(evaluate(nn.TwoLayerNet(2, 4, 2, seed=0), X, y))
    ['accuracy', 'loss']
    """
    out = outputs(model, X, batch_size)
    result = {"loss": float(loss(mt.Tensor(out), y).item())}
    labels = class_labels(y)
    if labels is not None:
        result["accuracy"] = float(np.mean(out.argmax(axis=-1) == labels))
    return result


def predict(model: Module, X: Any, batch_size: int | None = None) -> np.ndarray:
    """Predicted class of each row: the argmax of the model's outputs (eval mode).

    >>> import nn
    >>> predict(nn.TwoLayerNet(2, 4, 3, seed=0), np.zeros((2, 2), np.float32)).shape
    (2,)
    """
    return outputs(model, X, batch_size).argmax(axis=-1)


def _optimizer_for(model: Module, optimizer: Optimizer | None, lr: float | None) -> Optimizer:
    if optimizer is None:
        return SGD(model.parameters(), lr=0.1 if lr is None else lr)
    if lr is not None:
        raise ValueError("fit: pass either optimizer= or lr= (the rate of the default SGD), not both")
    return optimizer


class _Diverged(Exception):
    """Training stopped being finite: a batch's loss (caught before its step), or a weight."""


class TrainingDiverged(FloatingPointError):
    """``fit`` stopped because a batch loss or a weight became nan or inf.

    ``epoch`` (counted from 1), ``reason`` and ``lr`` (the learning rate then) say where and
    why, so a caller can word its own message; the model and the optimizer's state are back as
    they were at the start of that epoch.
    """

    def __init__(self, epoch: int, reason: str, lr: float) -> None:
        super().__init__(f"fit: in epoch {epoch}, {reason}; the model and the optimizer's state are back "
                         f"as they were at the start of that epoch. Try a smaller learning rate (now {lr})")
        self.epoch, self.reason, self.lr = epoch, reason, lr

    def __reduce__(self) -> tuple:  # pickled (to another process, say) from what made it
        return type(self), (self.epoch, self.reason, self.lr)


def _snapshot(model: Module, optimizer: Optimizer) -> Callable[[], None]:
    """A function that puts the model's parameters and the optimizer's buffers back as they are now."""
    weights = model.state_dict()
    buffers = {p: {key: np.copy(value) if isinstance(value, np.ndarray) else value
                   for key, value in state.items()} for p, state in optimizer.state.items()}

    def restore() -> None:
        model.load_state_dict(weights)
        optimizer.state.clear()
        optimizer.state.update(buffers)

    return restore


def _train_epoch(model: Module, loader: DataLoader, optimizer: Optimizer, loss: Loss,
                 classifying: bool) -> tuple[float, float]:
    """One pass over the loader; returns the mean training loss and accuracy."""
    model.train()
    total_loss, correct = 0.0, 0
    for batch, (Xb, yb) in enumerate(loader, 1):
        optimizer.zero_grad()
        out = model(Xb)
        batch_loss = loss(out, yb)
        value = batch_loss.item()
        if not math.isfinite(value):
            raise _Diverged(f"the training loss became {value} in batch {batch}")
        batch_loss.backward()
        optimizer.step()
        total_loss += value * len(Xb)
        if classifying:
            correct += int(np.sum(out.data.argmax(axis=-1) == class_labels(yb)))
    if not all(np.isfinite(p.data).all() for p in model.parameters()):  # the last step, which no loss saw
        raise _Diverged("a weight became nan or inf while every batch loss was finite")
    n = len(loader.X)
    return total_loss / n, correct / n


def fit(
    model: Module,
    X: Any,
    y: Any,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    optimizer: Optimizer | None = None,
    lr: float | None = None,
    loss: Loss = F.cross_entropy,
    validation_data: tuple[Any, Any] | None = None,
    seed: int | None = None,
    scheduler: LRScheduler | None = None,
    progress: bool | None = None,
    shuffle: bool = True,
) -> History:
    """Train ``model`` on ``(X, y)`` with minibatches; returns the per-epoch :class:`History`.

    ``optimizer`` defaults to ``SGD(model.parameters(), lr=lr)`` (lr 0.1 when not given); ``scheduler``
    steps once per epoch; ``seed`` fixes the shuffling. ``progress=True`` prints one line
    per epoch, ``False`` nothing, ``None`` (default) only once a run has lasted 5 s.
    A batch loss or a weight that becomes nan or inf stops training with a
    :class:`TrainingDiverged` (a FloatingPointError), and puts the model's parameters and the
    optimizer's state back as they were at the start of that epoch, so a retry with a smaller
    rate can start there.

    >>> import nn
    >>> X, y = nn.data.make_blobs(n_per_class=40, seed=1)
    >>> model = nn.TwoLayerNet(2, 8, 2, seed=0)
    >>> h = fit(model, X, y, epochs=2, optimizer=nn.optim.Adam(model.parameters(), lr=0.01),
    ...         validation_data=(X, y), seed=0, progress=True)  # doctest: +ELLIPSIS
    epoch 1/2  loss ...  acc ...  val_loss ...  val_acc ...  lr 0.01  ...s
    epoch 2/2  loss ...
    """
    optimizer = _optimizer_for(model, optimizer, lr)
    if scheduler is not None and scheduler.optimizer is not optimizer:
        raise ValueError("fit: the scheduler was made for a different optimizer than the one training")
    check_positive_int(epochs, "epochs", "fit")
    loader = DataLoader(X, y, batch_size, shuffle=shuffle, seed=seed)
    if len(loader.X) == 0:
        raise ValueError(f"fit: X and y hold no examples (X has shape {loader.X.shape}); there is nothing "
                         f"to train on")
    classifying = class_labels(loader.y) is not None
    history, start = History(), time.perf_counter()
    for epoch in range(epochs):
        history.lr.append(optimizer.param_groups[0]["lr"])
        restore = _snapshot(model, optimizer)
        try:
            train_loss, train_accuracy = _train_epoch(model, loader, optimizer, loss, classifying)
        except _Diverged as diverged:
            restore()  # so a retry with a smaller learning rate starts from finite weights
            raise TrainingDiverged(epoch + 1, str(diverged), history.lr[-1]) from None
        history.loss.append(train_loss)
        if classifying:
            history.accuracy.append(train_accuracy)
        if validation_data is not None:
            scores = evaluate(model, *validation_data, loss=loss)
            history.val_loss.append(scores["loss"])
            if "accuracy" in scores:
                history.val_accuracy.append(scores["accuracy"])
        if scheduler is not None:
            scheduler.step()
        history.seconds.append(time.perf_counter() - start)
        if progress or (progress is None and history.seconds[-1] > AUTO_PROGRESS_AFTER):
            print(history.line(epoch, epochs), flush=True)
    return history
