"""Two threads training two models at once get bit-identical results to training them one
after the other: grad mode, anomaly detection and module scopes are per thread, and the
shared tape counter only orders, never mixes, the two graphs."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import microtensor as mt
import nn
from nn import functional as F

STEPS = 150


@pytest.fixture
def interleaved():
    """Let the interpreter switch threads every microsecond, so the two loops really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32)


def train_with_dropout_and_no_grad_evaluation(wait: Callable[[], Any]) -> list[np.ndarray]:
    """SGD with momentum on an MLP with dropout; after each step, an evaluation under no_grad."""
    model = nn.MLP([8, 16, 16, 3], dropout=0.2, seed=0)
    opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, y = data(0)
    record = []
    for _ in range(STEPS):
        wait()
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        with mt.no_grad():
            model.eval()
            record.append(np.array([loss.item(), F.cross_entropy(model(X), y).item()]))
    return record + list(model.state_dict().values())


def train_under_anomaly_detection(wait: Callable[[], Any]) -> list[np.ndarray]:
    """Adam on a float64 TwoLayerNet, every op checked for NaN and inf."""
    model = nn.TwoLayerNet(8, 12, 3, seed=1, dtype=np.float64)
    opt = nn.optim.Adam(model.parameters(), lr=0.01)
    X, y = data(1)
    record = []
    with mt.detect_anomaly():
        for _ in range(STEPS):
            wait()
            opt.zero_grad()
            loss = F.cross_entropy(model(X.astype(np.float64)), y)
            loss.backward()
            opt.step()
            record.append(np.array([loss.item()]))
    return record + list(model.state_dict().values())


def fit_blobs(wait: Callable[[], Any]) -> list[np.ndarray]:
    """The user-level loop: nn.fit with shuffling and validation."""
    X, y = nn.data.make_blobs(n_per_class=60, dim=4, seed=2)
    model = nn.ThreeLayerNet(4, 10, 10, 2, seed=2)
    wait()
    history = nn.fit(model, X, y, epochs=6, batch_size=8, lr=0.05, validation_data=(X, y), seed=2,
                     progress=False)
    return [np.array(history.loss), np.array(history.val_loss)] + list(model.state_dict().values())


class Lockstep:
    """A barrier for two loops that releases the other loop for good once one of them ends."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=60)
        self.ended = False

    def wait(self) -> None:
        if self.ended:
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            if not self.ended:
                raise

    def end(self) -> None:
        self.ended = True
        self.barrier.abort()


def in_two_threads(first: Callable, second: Callable) -> tuple[list[np.ndarray], list[np.ndarray]]:
    lockstep = Lockstep()  # both loops take each step together
    results: dict[int, Any] = {}

    def run(index: int, train: Callable) -> None:
        try:
            results[index] = train(lockstep.wait)
        except BaseException as err:  # surfaced in the main thread below
            results[index] = err
        finally:
            lockstep.end()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in results.values():
        if isinstance(outcome, BaseException):
            raise outcome
    return results[0], results[1]


def assert_bit_identical(ours: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("first, second", [
    (train_with_dropout_and_no_grad_evaluation, train_under_anomaly_detection),
    (fit_blobs, train_with_dropout_and_no_grad_evaluation),
], ids=["manual loops", "nn.fit beside a manual loop"])
def test_two_threads_training_two_models_at_once_match_training_them_one_after_the_other(
        first, second, interleaved):
    alone = (first(lambda: None), second(lambda: None))
    together = in_two_threads(first, second)
    assert_bit_identical(together[0], alone[0])
    assert_bit_identical(together[1], alone[1])
