"""nn.fit / evaluate / predict, and the results the issue asks for on blobs and digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import nn
from nn import data
from nn import functional as F


def _blobs():
    """The notebook's training run: 800 points, 80/20 split, standardised on the training part."""
    X, y = data.make_blobs(n_per_class=400, seed=42)
    (X_train, y_train), (X_val, y_val) = data.train_val_split(X, y, val=0.2, seed=0)
    scaler = data.Standardizer().fit(X_train)
    return (scaler.transform(X_train), y_train), (scaler.transform(X_val), y_val)


def _digits(seed=0):
    """Digits split 70/10/20, pixels standardised with one mean and scale fitted on train."""
    X, y = data.load_digits()
    train, val, test = data.train_val_test_split(X, y, val=0.1, test=0.2, seed=seed)
    scaler = data.Standardizer(per_feature=False).fit(train[0])
    return [(scaler.transform(Xs), ys) for Xs, ys in (train, val, test)]


def _fit_digits(model):
    (X, y), val, (X_test, y_test) = _digits()
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    nn.fit(model, X, y, epochs=30, batch_size=32, optimizer=opt, scheduler=nn.optim.StepLR(opt, 10, 0.3),
           validation_data=val, seed=0, progress=False)
    return nn.evaluate(model, X_test, y_test)["accuracy"]


# -- results ---------------------------------------------------------------------------------------
def test_blobs_two_layer_net_reaches_validation_accuracy_of_at_least_0_99():
    (X, y), (X_val, y_val) = _blobs()
    model = nn.TwoLayerNet(2, 32, 2, seed=1)
    opt = nn.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    history = nn.fit(model, X, y, epochs=20, batch_size=64, optimizer=opt, validation_data=(X_val, y_val),
                     seed=0, progress=False)
    assert history.val_accuracy[-1] >= 0.99


def test_digits_two_layer_net_reaches_test_accuracy_of_at_least_0_97():
    assert _fit_digits(nn.TwoLayerNet(64, 64, 10, seed=0)) >= 0.97


def test_digits_three_layer_net_reaches_test_accuracy_of_at_least_0_97():
    assert _fit_digits(nn.ThreeLayerNet(64, 64, 32, 10, seed=0)) >= 0.97


# -- fit ---------------------------------------------------------------------------------------------
def test_fit_records_one_entry_per_epoch_and_the_loss_goes_down():
    (X, y), val = _blobs()
    history = nn.fit(nn.TwoLayerNet(2, 8, 2, seed=0), X, y, epochs=4, lr=0.05, validation_data=val,
                     seed=0, progress=False)
    records = (history.loss, history.accuracy, history.val_loss, history.val_accuracy)
    assert [len(v) for v in records] == [4] * 4
    assert history.loss[-1] < history.loss[0]
    assert history.seconds == sorted(history.seconds)


def test_fit_with_the_same_seeds_is_reproducible():
    (X, y), _ = _blobs()
    first, second = (nn.fit(nn.TwoLayerNet(2, 8, 2, seed=0), X, y, epochs=2, seed=3, progress=False)
                     for _ in range(2))
    assert first.loss == second.loss


def test_fit_training_loss_is_the_mean_over_the_epochs_minibatches():
    X, y = np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2
    model = nn.TwoLayerNet(3, 4, 2, seed=0, dtype=np.float64)
    losses = []
    opt = nn.optim.SGD(model.parameters(), lr=0.1)
    for Xb, yb in data.DataLoader(X, y, batch_size=4, seed=9):  # the loader fit makes from seed 9
        opt.zero_grad()
        loss = F.cross_entropy(model(Xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item() * len(yb))
    history = nn.fit(nn.TwoLayerNet(3, 4, 2, seed=0, dtype=np.float64), X, y, epochs=1, batch_size=4,
                     lr=0.1, seed=9, progress=False)
    assert history.loss[0] == pytest.approx(sum(losses) / 10, rel=1e-12)


def test_fit_steps_the_scheduler_once_per_epoch():
    (X, y), _ = _blobs()
    model = nn.TwoLayerNet(2, 4, 2)
    opt = nn.optim.SGD(model.parameters(), lr=0.1)
    history = nn.fit(model, X, y, epochs=3, optimizer=opt, scheduler=nn.optim.ExponentialLR(opt, 0.5),
                     progress=False)
    assert history.lr == pytest.approx([0.1, 0.05, 0.025])


def test_fit_on_one_hot_targets_is_fit_on_their_labels():
    (X, y), _ = _blobs()
    by_labels, by_one_hot = (nn.fit(nn.TwoLayerNet(2, 8, 2, seed=0), X, target, epochs=2, seed=0,
                                    progress=False) for target in (y, data.one_hot(y)))
    assert len(by_one_hot.accuracy) == 2 and by_one_hot.accuracy == by_labels.accuracy
    np.testing.assert_allclose(by_one_hot.loss, by_labels.loss, rtol=1e-6)


def test_fit_on_a_regression_target_has_no_accuracy():
    X = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    target = X.sum(axis=1, keepdims=True) * 0.7
    history = nn.fit(nn.MLP([2, 8, 1], seed=0), X, target, epochs=3, loss=F.mse_loss, lr=0.05, progress=False)
    assert history.accuracy == [] and history.loss[-1] < history.loss[0]


def test_fit_prints_a_line_per_epoch_with_progress(capsys):
    (X, y), val = _blobs()
    nn.fit(nn.TwoLayerNet(2, 4, 2), X, y, epochs=2, validation_data=val, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  loss ") and "val_acc" in lines[1]


def test_fit_is_quiet_on_a_short_run_by_default(capsys, monkeypatch):
    monkeypatch.setattr(nn.train, "AUTO_PROGRESS_AFTER", float("inf"))  # short, however slow the machine
    (X, y), _ = _blobs()
    nn.fit(nn.TwoLayerNet(2, 4, 2), X, y, epochs=1)
    assert capsys.readouterr().out == ""


def test_fit_shows_progress_by_default_once_a_run_is_long(capsys, monkeypatch):
    monkeypatch.setattr(nn.train, "AUTO_PROGRESS_AFTER", 0.0)
    (X, y), _ = _blobs()
    nn.fit(nn.TwoLayerNet(2, 4, 2), X, y, epochs=2)
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings on the way to nan
def test_fit_stops_with_a_clear_error_when_the_loss_diverges():
    X = np.full((8, 2), 1e30, dtype=np.float32)
    model = nn.TwoLayerNet(2, 4, 2, seed=0)
    before = model.state_dict()
    with pytest.raises(FloatingPointError, match=r"in epoch 1, a weight became nan or inf while every "
                                                 r"batch loss was finite; the model and the optimizer's "
                                                 r"state are back .* Try a smaller") as info:
        nn.fit(model, X, np.arange(8) % 2, epochs=2, lr=1e10, progress=False)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    # The pieces of the message, for a caller (the command line) to word its own.
    assert isinstance(info.value, nn.train.TrainingDiverged)
    assert (info.value.epoch, info.value.lr) == (1, 1e10)
    assert info.value.reason == "a weight became nan or inf while every batch loss was finite"
    # It travels whole, as the error of a fit run in another process does.
    copied = pickle.loads(pickle.dumps(info.value))
    assert type(copied) is type(info.value) and str(copied) == str(info.value)
    assert (copied.epoch, copied.reason, copied.lr) == (1, info.value.reason, 1e10)


@pytest.mark.parametrize("epochs", [0, -1, 2.5, "3", True])
def test_fit_refuses_epochs_that_are_not_a_positive_integer(epochs):
    with pytest.raises(ValueError, match=rf"^fit: epochs must be a positive integer, got {epochs!r}"):
        nn.fit(nn.TwoLayerNet(2, 4, 2), np.zeros((4, 2)), np.zeros(4, int), epochs=epochs)


def test_fit_on_no_examples_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^fit: X and y hold no examples \(X has shape \(0, 2\)\)"):
        nn.fit(nn.TwoLayerNet(2, 4, 2), np.zeros((0, 2)), np.zeros(0, int))


def test_a_fit_that_diverges_in_a_later_epoch_leaves_what_the_epoch_before_left():
    (X, y), _ = _blobs()
    X, y = X[:8], y[:8]  # two batches of 4 an epoch
    calls = []

    def nan_on_the_third_batch(out, target):  # epoch 2, batch 1
        calls.append(1)
        return F.cross_entropy(out, target) * (np.nan if len(calls) == 3 else 1.0)

    one_epoch, diverged = nn.TwoLayerNet(2, 4, 2, seed=0), nn.TwoLayerNet(2, 4, 2, seed=0)
    its_optimizer, restored_optimizer = (nn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
                                         for m in (one_epoch, diverged))
    nn.fit(one_epoch, X, y, epochs=1, batch_size=4, optimizer=its_optimizer, seed=0, progress=False)
    with pytest.raises(FloatingPointError, match="in epoch 2, the training loss became nan in batch 1;"):
        nn.fit(diverged, X, y, epochs=3, batch_size=4, optimizer=restored_optimizer,
               loss=nan_on_the_third_batch, seed=0, progress=False)
    assert len(calls) == 3
    for name, value in diverged.state_dict().items():
        np.testing.assert_array_equal(value, one_epoch.state_dict()[name])
    for p, q in zip(diverged.parameters(), one_epoch.parameters()):
        np.testing.assert_array_equal(restored_optimizer.state[p]["momentum_buffer"],
                                      its_optimizer.state[q]["momentum_buffer"])


def test_fit_refuses_both_an_optimizer_and_lr():
    model = nn.TwoLayerNet(2, 4, 2)
    with pytest.raises(ValueError, match="either optimizer= or lr="):
        nn.fit(model, np.zeros((2, 2)), np.zeros(2, int), optimizer=nn.optim.SGD(model.parameters()), lr=0.1)


def test_fit_refuses_a_scheduler_of_another_optimizer():
    model = nn.TwoLayerNet(2, 4, 2)
    other = nn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler was made for a different optimizer"):
        nn.fit(model, np.zeros((2, 2)), np.zeros(2, int), optimizer=nn.optim.SGD(model.parameters(), lr=0.1),
               scheduler=nn.optim.StepLR(other, 1))


# -- evaluate and predict ----------------------------------------------------------------------------
def test_evaluate_gives_the_loss_and_accuracy_of_the_model_outputs():
    (X, y), _ = _blobs()
    model = nn.TwoLayerNet(2, 4, 2, seed=0)
    logits = model(X).data
    scores = nn.evaluate(model, X, y)
    assert scores["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert scores["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))


def test_predict_is_the_argmax_class_and_batching_does_not_change_it():
    (X, _), _ = _blobs()
    model = nn.TwoLayerNet(2, 4, 3, seed=0)
    np.testing.assert_array_equal(nn.predict(model, X), model(X).data.argmax(axis=1))
    np.testing.assert_array_equal(nn.predict(model, X, batch_size=7), nn.predict(model, X))


def test_evaluate_runs_in_eval_mode_without_recording_and_restores_the_mode():
    model = nn.MLP([2, 16, 2], dropout=0.9, seed=0)
    X = np.ones((50, 2), np.float32)
    first, second = nn.predict(model, X), nn.predict(model, X)
    np.testing.assert_array_equal(first, second)  # dropout off: deterministic
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
