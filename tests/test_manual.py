"""nn.manual: the closed-form backprop agrees with the tape and with finite differences (the core
promise), the seed notebooks' own backward passes agree with the tape, and the three-way check
tells which of tape, formulas and finite differences is off."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import microtensor as mt
import nn
import nn.manual

MODELS = {
    "TwoLayerNet": lambda: nn.TwoLayerNet(5, 7, 3, seed=1, dtype=np.float64),
    "ThreeLayerNet": lambda: nn.ThreeLayerNet(5, 7, 6, 3, seed=2, dtype=np.float64),
}


def data(rng, n=8, d=5, classes=3, one_hot=False):
    X = rng.standard_normal((n, d))
    y = rng.integers(0, classes, n)
    return X, (np.eye(classes)[y] if one_hot else y)


def with_random_biases(model, rng):
    # Biases start at zero; non-zero ones make an L2 term wrongly put on a bias visible.
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data = rng.standard_normal(p.shape) * 0.3
    return model


# -- the core promise: tape == manual formulas == finite differences --------------------------------
CASES = [(model, reg, one_hot) for model in MODELS for reg in (0.0, 0.1) for one_hot in (False, True)]


@pytest.mark.parametrize("model_name, reg, one_hot", CASES)
def test_tape_manual_and_finite_differences_agree_to_1e_7(model_name, reg, one_hot, rng):
    model = with_random_biases(MODELS[model_name](), rng)
    X, y = data(rng, one_hot=one_hot)
    report = nn.manual.check(model, X, y, reg=reg, entries=None)
    assert report, str(report)
    for row in report.rows:
        assert max(row.tape_vs_manual, row.tape_vs_numerical, row.manual_vs_numerical) < 1e-7, str(report)


def named_forward(model, X, y, reg):
    """The model's forward with every parameter and layer output named, for check_manual."""
    for name, p in model.named_parameters():
        p.named(name)
    x = X
    for name, layer in nn.manual.chain(model):
        x = layer(x).named(name)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    return nn.functional.cross_entropy(x, y) + nn.functional.l2_penalty(weights, reg)


@pytest.mark.parametrize("model_name, reg, one_hot", CASES)
def test_manual_gradients_of_every_layer_output_match_the_tape(model_name, reg, one_hot, rng):
    model = with_random_biases(MODELS[model_name](), rng)
    X, y = data(rng, one_hot=one_hot)
    manual = nn.manual.gradients(model, X, y, reg, layer_outputs=True)
    report = mt.check_manual(named_forward(model, X, y, reg), manual, atol=1e-12, rtol=1e-7)
    assert report, str(report)
    assert {row.name for row in report.rows} == set(manual)


def test_int_labels_and_one_hot_labels_give_the_same_gradients(rng):
    model = MODELS["ThreeLayerNet"]()
    X, y = data(rng)
    by_int = nn.manual.gradients(model, X, y, 0.1)
    by_one_hot = nn.manual.gradients(model, X, np.eye(3)[y], 0.1)
    for name in by_int:
        np.testing.assert_array_equal(by_int[name], by_one_hot[name])


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_target_rows_that_do_not_sum_to_1_agree_with_the_tape(scale, rng):
    # The loss is -sum(y * log_softmax) / n, whose gradient is softmax * (row sum of y) - y, not
    # the familiar softmax - y, when the rows of y do not sum to 1 (scale 0: all-zero rows).
    model = with_random_biases(MODELS["TwoLayerNet"](), rng)
    X, _ = data(rng)
    targets = rng.random((8, 3)) * scale
    report = nn.manual.check(model, X, targets, reg=0.1, entries=None)
    assert report, str(report)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlps_with_each_activation_agree_three_ways(activation, rng):
    model = nn.MLP([5, 6, 4, 3], activation=activation, seed=3, dtype=np.float64)
    X, y = data(rng)
    assert nn.manual.check(model, X, y, reg=0.05)


def test_a_float32_model_is_checked_with_float32_tolerances(rng):
    model = nn.TwoLayerNet(5, 7, 3, seed=1)
    X, y = data(rng)
    report = nn.manual.check(model, X.astype(np.float32), y)
    assert report and "atol=1e-05, rtol=0.001" in str(report)
    assert nn.manual.gradients(model, X, y)["fc1.weight"].dtype == np.float32


def test_gradients_never_touch_the_tape_or_the_models_grads(rng):
    model = MODELS["TwoLayerNet"]()
    X, y = data(rng)
    grads = nn.manual.gradients(model, X, y, 0.1)
    assert all(isinstance(g, np.ndarray) for g in grads.values())
    assert all(p.grad is None for p in model.parameters())


def test_check_leaves_the_parameters_as_they_were(rng):
    model = MODELS["TwoLayerNet"]()
    before = model.state_dict()
    nn.manual.check(model, *data(rng), reg=0.1)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[name])
        assert p.data.dtype == before[name].dtype and p.grad is None


def test_a_graph_built_before_the_check_can_still_be_backpropagated(rng):
    model = MODELS["TwoLayerNet"]()
    X, y = data(rng)
    loss = nn.manual.loss(model, X, y, 0.1)
    nn.manual.check(model, X, y, reg=0.1)
    loss.backward()
    assert model.fc1.weight.grad is not None


def test_check_perturbs_at_most_entries_random_entries_per_parameter(rng):
    model = nn.TwoLayerNet(20, 30, 3, seed=0, dtype=np.float64)
    report = nn.manual.check(model, *data(rng, d=20), entries=10)
    assert report and "finite differences at 33 of 723 entries" in str(report)


# -- which layers the formulas know ------------------------------------------------------------------
def test_dropout_in_training_mode_is_refused_with_a_hint(rng):
    model = nn.MLP([5, 6, 3], dropout=0.5, seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"nn.manual: 2 is Dropout\(p=0.5\) in training.*model.eval\(\)"):
        nn.manual.gradients(model, *data(rng))


def test_dropout_in_eval_mode_is_the_identity_and_checks(rng):
    model = nn.MLP([5, 6, 3], dropout=0.5, seed=0, dtype=np.float64).eval()
    assert nn.manual.check(model, *data(rng))


def test_a_layer_the_formulas_do_not_know_is_a_type_error_naming_it(rng):
    model = nn.Sequential(nn.Linear(5, 3, seed=0), nn.LogSoftmax())
    with pytest.raises(TypeError, match="nn.manual: 1 is a LogSoftmax"):
        nn.manual.gradients(model, *data(rng))


def test_a_chain_that_does_not_end_in_a_linear_is_a_type_error(rng):
    with pytest.raises(TypeError, match="must end with a Linear"):
        nn.manual.chain(nn.Sequential(nn.Linear(5, 3, seed=0), nn.ReLU()))


def test_a_parameter_outside_a_linear_is_a_type_error(rng):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.ones(3))
            self.fc = nn.Linear(5, 3, seed=0)

    with pytest.raises(TypeError, match=r"parameters \['scale'\] are not in a Linear"):
        nn.manual.chain(Scaled())


def test_labels_out_of_range_are_a_value_error(rng):
    X, _ = data(rng)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        nn.manual.gradients(MODELS["TwoLayerNet"](), X, np.full(8, 3))


# -- the three-way verdicts --------------------------------------------------------------------------
def three_way(tape, manual, numerical):
    pair = lambda expected, actual: mt.compare_grads({"W": expected}, {"W": actual})
    pairs = (pair(tape, manual), pair(numerical, tape), pair(numerical, manual))
    return nn.manual.ManualReport("test", pairs, "")


VERDICTS = {  # (tape, manual, numerical) as multiples of the right gradient -> verdict
    (1, 1, 1): "ok", (1, 2, 1): "manual wrong", (2, 1, 1): "tape wrong", (1, 1, 2): "numerical off",
    (1, 2, 3): "all differ",
}


@pytest.mark.parametrize("factors, verdict", VERDICTS.items())
def test_the_verdict_says_which_of_the_three_disagrees(factors, verdict, rng):
    g = rng.standard_normal((3, 2))
    report = three_way(*(f * g for f in factors))
    assert report["W"].verdict == verdict
    assert bool(report) == (verdict == "ok")


def test_a_wrong_manual_formula_is_diagnosed_against_the_tape(rng, monkeypatch):
    forward, _ = nn.manual._ACTIVATIONS[nn.ReLU]
    monkeypatch.setitem(nn.manual._ACTIVATIONS, nn.ReLU, (forward, lambda g, x, out: g))  # no mask
    report = nn.manual.check(MODELS["TwoLayerNet"](), *data(rng))
    assert report.first_wrong == "fc1.bias" and report["fc1.bias"].verdict == "manual wrong"
    assert report["fc2.weight"].verdict == "ok"


def test_a_wrong_op_rule_in_the_engine_shows_as_the_tape_being_wrong(rng, monkeypatch):
    monkeypatch.setattr(mt.ops.relu, "vjps", (lambda g, out, x: g,))
    report = nn.manual.check(MODELS["TwoLayerNet"](), *data(rng))
    assert report["fc1.weight"].verdict == "tape wrong"
    assert "engine bug" in report["fc1.weight"].diagnosis


def test_str_of_the_check_is_a_table_of_the_three_comparisons(rng):
    lines = str(nn.manual.check(MODELS["TwoLayerNet"](), *data(rng))).splitlines()
    assert lines[0] == "nn.manual.check: all 4 parameters agree"
    assert lines[3].split() == ["parameter", "shape", "tape", "vs", "manual", "tape", "vs", "numerical",
                                "manual", "vs", "numerical", "verdict"]
    assert [line.split()[0] for line in lines[4:]] == ["fc2.bias", "fc2.weight", "fc1.bias", "fc1.weight"]


# -- no false alarms ---------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), batch=st.integers(1, 7),
       activation=st.sampled_from(["relu", "sigmoid", "tanh"]), reg=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**31))
def test_correct_gradients_of_random_mlps_always_pass(sizes, batch, activation, reg, seed):
    rng = np.random.default_rng(seed)
    model = with_random_biases(nn.MLP(sizes + [3], activation=activation, seed=seed, dtype=np.float64), rng)
    X, y = rng.standard_normal((batch, sizes[0])), rng.integers(0, 3, batch)
    assert nn.manual.check(model, X, y, reg=reg)


def test_a_relu_input_exactly_at_its_kink_is_blamed_on_finite_differences(rng):
    # Zero biases behind a dead unit put the next ReLU's input exactly at 0, where the
    # derivative does not exist: the tape and the formulas agree, central differences cannot.
    model = nn.MLP([3, 4, 1, 3], seed=0, dtype=np.float64)
    model[0].bias.data[:] = -100.0  # every unit of the first layer dead
    report = nn.manual.check(model, rng.standard_normal((1, 3)), np.array([0]))
    assert report["2.bias"].verdict == "numerical off"
    assert "1 ReLU input(s) within eps of 0" in str(report)


# -- the seed notebooks' own backward passes, as plain functions --------------------------------------
def load(model, W1, b1, W2, b2):
    model.load_state_dict({"fc1.weight": W1, "fc1.bias": b1.reshape(-1), "fc2.weight": W2,
                           "fc2.bias": b2.reshape(-1)})
    return model


def tape_gradients(model, X, y, reg=0.0):
    return dict(zip([n for n, _ in model.named_parameters()],
                    mt.grad(nn.manual.loss(model, X, y, reg), list(model.parameters()))))


def as_model_names(dW1, db1, dW2, db2):
    return {"fc1.weight": dW1, "fc1.bias": db1.reshape(-1), "fc2.weight": dW2, "fc2.bias": db2.reshape(-1)}


def seed_000_backward(X, y_onehot, W1, b1, W2, b2, reg):
    """000: TwoLayerNet.backward (one-hot labels, L2 in the gradient, (1, H) biases)."""
    z1 = X @ W1 + b1
    a1 = np.maximum(0, z1)
    scores = a1 @ W2 + b2
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    N = X.shape[0]
    dscores = (probs - y_onehot) / N
    dW2 = a1.T @ dscores + reg * W2
    db2 = dscores.sum(axis=0, keepdims=True)
    dz1 = (dscores @ W2.T) * (z1 > 0)
    return X.T @ dz1 + reg * W1, dz1.sum(axis=0, keepdims=True), dW2, db2


def test_seed_000_two_layer_net_backward_agrees_with_the_tape(rng):
    W1, b1 = 0.01 * rng.standard_normal((4, 5)), 0.1 * rng.standard_normal((1, 5))
    W2, b2 = 0.01 * rng.standard_normal((5, 3)), 0.1 * rng.standard_normal((1, 3))
    X, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    Y = np.eye(3)[y]
    model = load(nn.TwoLayerNet(4, 5, 3, dtype=np.float64), W1, b1, W2, b2)
    notebook = as_model_names(*seed_000_backward(X, Y, W1, b1, W2, b2, reg=1e-4))
    assert mt.compare_grads(tape_gradients(model, X, Y, reg=1e-4), notebook)


def seed_002_backward(X, Y_onehot, W1, b1, W2, b2):
    """002: TwoLayerMLP.backward (one-hot labels, (H,) biases, weight decay left to the step)."""
    z1 = X @ W1 + b1
    h = np.maximum(0, z1)
    logits = h @ W2 + b2
    z = logits - np.max(logits, axis=1, keepdims=True)
    probs = np.exp(z) / np.sum(np.exp(z), axis=1, keepdims=True)
    B = Y_onehot.shape[0]
    dlogits = (probs - Y_onehot) / B
    dW2 = h.T @ dlogits
    db2 = np.sum(dlogits, axis=0)
    dz1 = (dlogits @ W2.T) * (z1 > 0).astype(z1.dtype)
    return X.T @ dz1, np.sum(dz1, axis=0), dW2, db2


def test_seed_002_two_layer_mlp_backward_agrees_with_the_tape():
    init = np.random.default_rng(1)  # the notebook's own initialisation, in float64
    W1, b1 = init.normal(0, 0.02, size=(2, 32)), np.zeros(32)
    W2, b2 = init.normal(0, 0.02, size=(32, 2)), np.zeros(2)
    blobs = np.random.default_rng(42)
    X = np.vstack([blobs.normal(-2.0, 1.0, (32, 2)), blobs.normal(2.0, 1.0, (32, 2))])
    Y = np.eye(2)[np.repeat([0, 1], 32)]
    model = load(nn.TwoLayerNet(2, 32, 2, dtype=np.float64), W1, b1, W2, b2)
    notebook = as_model_names(*seed_002_backward(X, Y, W1, b1, W2, b2))
    assert mt.compare_grads(tape_gradients(model, X, Y), notebook)


def seed_003_backward(x, y, W1, b1, W2, b2):
    """003: backward(x, y) (int labels, dscore[range(n), y] -= 1, dh[h <= 0] = 0)."""
    h = np.maximum(0, np.dot(x, W1) + b1)
    score = np.dot(h, W2) + b2
    o = np.exp(score)
    o /= np.sum(o, axis=1, keepdims=True)
    n_samples = x.shape[0]
    dscore = np.copy(o)
    dscore[range(n_samples), y] -= 1
    dscore /= n_samples
    dW2 = np.dot(h.T, dscore)
    db2 = np.sum(dscore, axis=0, keepdims=True)
    dh = np.dot(dscore, W2.T)
    dh[h <= 0] = 0
    return np.dot(x.T, dh), np.sum(dh, axis=0, keepdims=True), dW2, db2


def test_seed_003_numpy_two_layer_backward_agrees_with_the_tape(rng):
    W1, b1 = 0.01 * rng.random((2, 2)), np.zeros((1, 2))
    W2, b2 = 0.01 * rng.random((2, 3)), np.zeros((1, 3))
    x, y = rng.standard_normal((20, 2)) * 2, rng.integers(0, 3, 20)
    model = load(nn.TwoLayerNet(2, 2, 3, dtype=np.float64), W1, b1, W2, b2)
    notebook = as_model_names(*seed_003_backward(x, y, W1, b1, W2, b2))
    assert mt.compare_grads(tape_gradients(model, x, y), notebook)


def test_a_notebooks_keepdims_bias_gradient_is_flagged_with_the_fix(rng):
    W1, b1 = 0.01 * rng.random((2, 2)), np.zeros((1, 2))
    W2, b2 = 0.01 * rng.random((2, 3)), np.zeros((1, 3))
    x, y = rng.standard_normal((20, 2)), rng.integers(0, 3, 20)
    model = load(nn.TwoLayerNet(2, 2, 3, dtype=np.float64), W1, b1, W2, b2)
    dW1, db1, dW2, db2 = seed_003_backward(x, y, W1, b1, W2, b2)
    notebook = as_model_names(dW1, db1, dW2, db2) | {"fc2.bias": db2}  # (1, 3), as the notebook has it
    report = mt.compare_grads(tape_gradients(model, x, y), notebook)
    assert report.first_wrong == "fc2.bias" and "drop keepdims=True" in report["fc2.bias"].diagnosis


def test_two_agreeing_pairs_and_one_just_outside_the_tolerance_are_called_borderline():
    exact = np.linspace(1.0, 2.0, 6)
    tape, manual, numerical = exact, exact * (1 + 8e-6), exact * (1 - 8e-6)  # each pair 8e-6 or 1.6e-5 apart
    compare = lambda expected, actual: mt.compare_grads({"w": expected}, {"w": actual}, atol=0.0, rtol=1e-5)
    report = nn.manual.ManualReport("t", (compare(tape, manual), compare(numerical, tape),
                                          compare(numerical, manual)), "")
    assert not report and report["w"].verdict == "borderline"
    assert "near rtol" in report["w"].diagnosis


def test_a_report_row_is_found_by_parameter_name_and_a_missing_name_lists_the_others(rng):
    model = nn.TwoLayerNet(3, 4, 2, seed=0, dtype=np.float64)
    report = nn.manual.check(model, rng.standard_normal((5, 3)), np.array([0, 1, 1, 0, 1]))
    assert isinstance(report, mt.RowReport) and report
    assert report["fc1.weight"].shape == (3, 4) and report["fc1.weight"].verdict == "ok"
    with pytest.raises(KeyError, match=r"ManualReport: no parameter named 'fc3.weight'; parameters: "
                                       r"\['fc2.bias', 'fc2.weight', 'fc1.bias', 'fc1.weight'\]"):
        report["fc3.weight"]
