"""The bug zoo: deliberately wrong backprop, each caught, localised and named.

Every entry is a mistake a learner makes in the hand-written backward pass of a two- or
three-layer net (checked with ``mt.check_manual``), or in an op's derivative (checked with
``mt.gradcheck``). For each: the report is falsy, ``first_wrong`` names the wrong step, and
the diagnosis contains the words that name the mistake.

``python tests/test_bug_zoo.py`` prints the measured rates that docs/checking.md quotes;
``test_documented_rates_are_the_measured_rates`` keeps the two in sync.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import microtensor as mt
import nn
import nn.manual
from microtensor import Tensor
from microtensor.ops import _log_softmax, _sigmoid

ACTIVATIONS = {"relu": mt.relu, "sigmoid": mt.sigmoid, "tanh": mt.tanh}
DERIVATIVES = {  # d loss / d pre-activation from d loss / d activation, the activation h and its input z
    "relu": lambda dh, z, h: dh * (z > 0),
    "sigmoid": lambda dh, z, h: dh * h * (1 - h),
    "tanh": lambda dh, z, h: dh * (1 - h * h),
}


@dataclass
class Net:
    """A net written as tensor expressions with every step named, plus its forward values."""

    sizes: tuple[int, ...]
    activation: str
    reg: float
    X: np.ndarray
    y: np.ndarray
    params: dict[str, Tensor]
    loss: Tensor
    values: dict[str, np.ndarray]

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def N(self) -> int:
        return len(self.X)

    @property
    def Y(self) -> np.ndarray:
        return np.eye(self.sizes[-1])[self.y]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


def build(sizes=(5, 6, 3), activation="relu", reg=0.1, seed=0, op=None, dtype=np.float64) -> Net:
    """Layers z_i = x @ W_i + b_i, h_i = act(z_i), scores; mean cross-entropy + 0.5 reg sum W**2.

    ``op`` replaces the activation (a hand-made op with a wrong derivative).
    """
    rng = np.random.default_rng(seed)
    n = 8
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:]), start=1):
        W, b = (rng.standard_normal((fan_in, fan_out)) * 0.6).astype(dtype), \
            (rng.standard_normal(fan_out) * 0.3).astype(dtype)
        params[f"W{i}"] = Tensor(W, requires_grad=True, name=f"W{i}")
        params[f"b{i}"] = Tensor(b, requires_grad=True, name=f"b{i}")
    loss = forward(params, X, y, reg, op or ACTIVATIONS[activation])
    values = {t.name: t.data for t in _named_tensors(loss)}
    values["probs"] = np.exp(_log_softmax(values["scores"], axis=1))
    return Net(tuple(sizes), activation, reg, X, y, params, loss, values)


def forward(params, X, y, reg, activation, log_softmax=mt.log_softmax, mean=mt.mean):
    depth = len(params) // 2
    x = X
    for i in range(1, depth):
        z = (x @ params[f"W{i}"] + params[f"b{i}"]).named(f"z{i}")
        x = activation(z).named(f"h{i}")
    scores = (x @ params[f"W{depth}"] + params[f"b{depth}"]).named("scores")
    logp = log_softmax(scores, axis=1)
    penalty = sum((params[f"W{i}"] ** 2).sum() for i in range(1, depth + 1))
    return -mean(logp[np.arange(len(y)), y]) + 0.5 * reg * penalty


def _named_tensors(loss):
    seen, stack, found = set(), [loss], []
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.name:
            found.append(t)
        if t._node is not None:
            stack += [a for a in t._node.inputs if isinstance(a, Tensor)]
    return found


def backward(net: Net, bug: ManualBug | None = None) -> dict[str, np.ndarray]:
    """The notebooks' backward pass; ``bug`` replaces the formula of one step, and the steps
    after it use its (wrong) result, as in a learner's code."""
    grads: dict[str, np.ndarray] = {}

    def step(name, correct):
        grads[name] = bug.wrong(net, grads) if bug is not None and bug.step == name else correct
        return grads[name]

    d = step("scores", (net["probs"] - net.Y) / net.N)
    for i in range(net.depth, 0, -1):
        x = net.X if i == 1 else net[f"h{i - 1}"]
        W = net.params[f"W{i}"].data
        step(f"W{i}", x.T @ d + net.reg * W)
        step(f"b{i}", d.sum(axis=0))
        if i > 1:
            dh = step(f"h{i - 1}", d @ W.T)
            d = step(f"z{i - 1}", DERIVATIVES[net.activation](dh, net[f"z{i - 1}"], net[f"h{i - 1}"]))
    return grads


# -- the zoo: mistakes in hand-written backprop --------------------------------------------------
TWO = {"sizes": (5, 6, 3)}
THREE = {"sizes": (5, 6, 6, 3)}
SIGMOID = {"sizes": (5, 6, 3), "activation": "sigmoid"}
TANH = {"sizes": (5, 6, 3), "activation": "tanh"}


def _sigmoid_np(x):
    return 1 / (1 + np.exp(-x))


def _naive_softmax(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ManualBug:
    description: str
    net: dict
    step: str
    wrong: Callable[[Net, dict], np.ndarray]
    words: tuple[str, ...]
    found_at: str = ""  # when only the parameters are checked: where the report points

    @property
    def first_wrong(self) -> str:
        return self.found_at or self.step

    def report(self) -> mt.GradReport:
        net = build(**self.net)
        grads = backward(net, self)
        if self.found_at:  # as the notebooks check: dW1, db1, dW2, db2 and nothing in between
            grads = {name: grads[name] for name in net.params}
        return mt.check_manual(net.loss, grads)


MANUAL_BUGS = [
    ManualBug("dscores without the 1/N of the mean", TWO, "scores",
              lambda n, g: n["probs"] - n.Y, ("N = 8", "batch")),
    ManualBug("dscores divided by N twice", THREE, "scores",
              lambda n, g: (n["probs"] - n.Y) / n.N ** 2, ("1/N", "once too often")),
    ManualBug("dscores with the sign flipped (y - probs)", TWO, "scores",
              lambda n, g: (n.Y - n["probs"]) / n.N, ("sign flipped",)),
    ManualBug("dscores = probs / N, the labels never subtracted", TWO, "scores",
              lambda n, g: n["probs"] / n.N, ("log-softmax", "- y")),
    ManualBug("dscores = -y / N, the log-softmax gradient without its softmax term", TWO, "scores",
              lambda n, g: -n.Y / n.N, ("softmax * sum(g)",)),
    ManualBug("dscores from a softmax that overflows (no max subtracted)", TWO, "scores",
              lambda n, g: (_naive_softmax(500 * n["scores"]) - n.Y) / n.N, ("not finite", "row max")),
    ManualBug("dW2 transposed (dscores.T @ h)", TWO, "W2",
              lambda n, g: g["scores"].T @ n["h1"] + n.reg * n.params["W2"].data.T, ("transposed",)),
    ManualBug("db2 not summed over the batch", TWO, "b2",
              lambda n, g: g["scores"], ("not summed over the batch",)),
    ManualBug("db2 summed with keepdims=True", TWO, "b2",
              lambda n, g: g["scores"].sum(axis=0, keepdims=True), ("keepdims",)),
    ManualBug("db1 summed over the wrong axis", TWO, "b1",
              lambda n, g: g["z1"].sum(axis=1), ("axis 1", "batch axis 0")),
    ManualBug("dW2 without the L2 term", TWO, "W2",
              lambda n, g: n["h1"].T @ g["scores"], ("misses the L2 term", "reg * W2")),
    ManualBug("db2 with an L2 term (biases are not regularised)", TWO, "b2",
              lambda n, g: g["scores"].sum(0) + n.reg * n.params["b2"].data, ("extra L2 term",)),
    ManualBug("dW1 with 2 * reg * W1 (the 0.5 forgotten)", TWO, "W1",
              lambda n, g: n.X.T @ g["z1"] + 2 * n.reg * n.params["W1"].data, ("extra L2 term", "twice")),
    ManualBug("dW1 regularised by reg * dW1 instead of reg * W1", TWO, "W1",
              lambda n, g: (1 + n.reg) * (n.X.T @ g["z1"]),
              ("applied to the gradient instead of the weight",)),
    ManualBug("dW1 without the 1/N in its data term, the L2 term kept", TWO, "W1",
              lambda n, g: n.N * (n.X.T @ g["z1"]) + n.reg * n.params["W1"].data, ("N = 8", "1/N")),
    ManualBug("dW2 with its data term's sign flipped, the L2 term kept", TWO, "W2",
              lambda n, g: n.reg * n.params["W2"].data - n["h1"].T @ g["scores"],
              ("L2 term 0.1 * W2", "sign of its data term")),
    ManualBug("dz1 without the ReLU mask", TWO, "z1",
              lambda n, g: g["h1"], ("ReLU unmasked", "(z1 > 0)")),
    ManualBug("dz1 with the inverted ReLU mask", TWO, "z1",
              lambda n, g: g["h1"] * (n["z1"] <= 0), ("inverted",)),
    ManualBug("dz1 masked by the gradient's sign", TWO, "z1",
              lambda n, g: g["h1"] * (g["h1"] > 0), ("sign of the incoming gradient",)),
    ManualBug("dz1 with the leaky-ReLU derivative", TWO, "z1",
              lambda n, g: g["h1"] * np.where(n["z1"] > 0, 1.0, 0.01), ("right where the ReLU is active",)),
    ManualBug("dh1 masked already (the mask applied one step early)", TWO, "h1",
              lambda n, g: (g["scores"] @ n.params["W2"].data.T) * (n["z1"] > 0), ("already masked",)),
    ManualBug("dW1 never computed (left as zeros)", TWO, "W1",
              lambda n, g: np.zeros((5, 6)), ("all zeros",)),
    ManualBug("dW2's last column never filled in", TWO, "W2",
              lambda n, g: np.c_[(n["h1"].T @ g["scores"] + n.reg * n.params["W2"].data)[:, :-1],
                                 np.zeros(6)],
              ("zero at 6 of 18 entries",)),
    ManualBug("dW1 with a typo in one entry", TWO, "W1",
              lambda n, g: n.X.T @ g["z1"] + n.reg * n.params["W1"].data + np.eye(5, 6, 3) * 0.5,
              ("largest at (0, 3)", "row(s) 0")),
    ManualBug("dz1 masked with the next layer's pre-activation z2", THREE, "z1",
              lambda n, g: g["h1"] * (n["z2"] > 0), ("wrong tensor", "(z2 > 0)")),
    ManualBug("dW2 from the pre-activation z1 instead of h1", TWO, "W2",
              lambda n, g: n["z1"].T @ g["scores"] + n.reg * n.params["W2"].data,
              ("uses z1 where", "h1.T @ g")),
    ManualBug("dh1 = dz2 @ W2 instead of W2.T", THREE, "h1",
              lambda n, g: g["z2"] @ n.params["W2"].data, ("instead of W2.T",)),
    ManualBug("dW2 twice too large", THREE, "W2",
              lambda n, g: 2 * (n["h1"].T @ g["z2"] + n.reg * n.params["W2"].data), ("twice",)),
    ManualBug("dz2 without the ReLU mask", THREE, "z2",
              lambda n, g: g["h2"], ("ReLU unmasked", "(z2 > 0)")),
    ManualBug("dW3 without the L2 term", THREE, "W3",
              lambda n, g: n["h2"].T @ g["scores"], ("misses the L2 term",)),
    ManualBug("db1 not summed over the batch", THREE, "b1",
              lambda n, g: g["z1"], ("not summed over the batch",)),
    ManualBug("dz1 = dh1 * z1 * (1 - z1): the sigmoid derivative from the pre-activation", SIGMOID, "z1",
              lambda n, g: g["h1"] * n["z1"] * (1 - n["z1"]), ("pre-activation",)),
    ManualBug("dz1 = dh1 * sigmoid(h1) * (1 - sigmoid(h1)): sigmoid applied twice", SIGMOID, "z1",
              lambda n, g: g["h1"] * _sigmoid_np(n["h1"]) * (1 - _sigmoid_np(n["h1"])), ("again",)),
    ManualBug("dz1 = dh1: the sigmoid's derivative forgotten", SIGMOID, "z1",
              lambda n, g: g["h1"], ("without its derivative",)),
    ManualBug("dz1 = dh1 * (1 - z1**2): the tanh derivative from the pre-activation", TANH, "z1",
              lambda n, g: g["h1"] * (1 - n["z1"] ** 2), ("pre-activation",)),
    # Checked on the parameters alone, as the notebooks do: the report names the mistake at the logits.
    ManualBug("dscores = probs / N, checked on the parameters only", TWO, "scores",
              lambda n, g: n["probs"] / n.N, ("carries back", "gradient at scores", "- y"), found_at="b2"),
    ManualBug("dscores = -y / N, checked on the parameters only", THREE, "scores",
              lambda n, g: -n.Y / n.N, ("carries back", "gradient at scores", "softmax * sum(g)"),
              found_at="b3"),
    ManualBug("dscores without 1/N, checked on the parameters only", TWO, "scores",
              lambda n, g: n["probs"] - n.Y, ("carries back", "N = 8", "1/N of the mean"), found_at="b2"),
    ManualBug("dscores divided by N twice, checked on the parameters only", THREE, "scores",
              lambda n, g: (n["probs"] - n.Y) / n.N ** 2, ("carries back", "once too often"), found_at="b3"),
    ManualBug("dz1 without the ReLU mask, checked on the parameters only", TWO, "z1",
              lambda n, g: g["h1"], ("carries back", "gradient at z1", "ReLU unmasked"), found_at="b1"),
    ManualBug("dz2 with the inverted ReLU mask, checked on the parameters only", THREE, "z2",
              lambda n, g: g["h2"] * (n["z2"] <= 0), ("carries back", "gradient at z2", "inverted"),
              found_at="b2"),
    ManualBug("dz1 = dh1, the sigmoid's derivative forgotten, checked on the parameters only", SIGMOID, "z1",
              lambda n, g: g["h1"], ("carries back", "gradient at z1", "without its derivative"),
              found_at="b1"),
    ManualBug("dz1 = dh1 * z1 * (1 - z1), checked on the parameters only", SIGMOID, "z1",
              lambda n, g: g["h1"] * n["z1"] * (1 - n["z1"]), ("carries back", "pre-activation"),
              found_at="b1"),
    # One formula took a wrong gradient from further down, the others did not.
    ManualBug("dW1 from the unmasked dh1, checked on the parameters only", TWO, "W1",
              lambda n, g: n.X.T @ g["h1"] + n.reg * n.params["W1"].data,
              ("computed from a wrong gradient", "ReLU unmasked"), found_at="W1"),
    ManualBug("db2 summed from probs, without the - y, checked on the parameters only", TWO, "b2",
              lambda n, g: n["probs"].sum(axis=0) / n.N, ("computed from a wrong gradient", "- y"),
              found_at="b2"),
]


# -- the zoo: mistakes on nn models, whose tape has the fused linear and cross-entropy ops ---------
@dataclass(frozen=True)
class ModelBug:
    """One gradient of an nn model's parameters or layer outputs replaced by a wrong one."""

    description: str
    sizes: tuple[int, ...]
    step: str  # a parameter name ("fc1.bias") or a layer name, whose output's gradient it is ("fc2")
    wrong: Callable[[dict, dict, np.ndarray], np.ndarray]  # (correct grads, forward values, Y) -> wrong
    words: tuple[str, ...]

    @property
    def first_wrong(self) -> str:
        return self.step

    @property
    def net(self) -> dict:
        return {"sizes": self.sizes}

    def report(self) -> mt.GradReport:
        rng = np.random.default_rng(0)
        net = nn.TwoLayerNet if len(self.sizes) == 3 else nn.ThreeLayerNet
        model = net(*self.sizes, seed=0, dtype=np.float64)
        for name, p in model.named_parameters():
            p.named(name)
            if name.endswith("bias"):  # zero biases would hide a wrong L2 or mask
                p.data = 0.3 * rng.standard_normal(p.shape)
        X, y = rng.standard_normal((8, self.sizes[0])), rng.integers(0, self.sizes[-1], 8)
        x, values = X, {}
        for name, layer in nn.manual.chain(model):
            x = layer(x).named(name)
            values[name] = x.data
        loss = nn.functional.cross_entropy(x, y)
        grads = nn.manual.gradients(model, X, y, layer_outputs=True)
        grads[self.step] = self.wrong(grads, values | {p: v.data for p, v in model.named_parameters()},
                                      np.eye(self.sizes[-1])[y])
        return mt.check_manual(loss, grads)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


MODEL_BUGS = [
    ModelBug("TwoLayerNet: dlogits without the 1/N", (5, 6, 3), "fc2",
             lambda g, v, Y: _softmax(v["fc2"]) - Y, ("N = 8",)),
    ModelBug("TwoLayerNet: dlogits = probs / N", (5, 6, 3), "fc2",
             lambda g, v, Y: _softmax(v["fc2"]) / 8, ("- y of (probs - y) / N",)),
    ModelBug("TwoLayerNet: dlogits = -y / N", (5, 6, 3), "fc2",
             lambda g, v, Y: -Y / 8, ("softmax * sum(g)",)),
    ModelBug("TwoLayerNet: fc1.bias summed over axis 1", (5, 6, 3), "fc1.bias",
             lambda g, v, Y: g["fc1"].sum(axis=1), ("axis 1",)),
    ModelBug("TwoLayerNet: dz1 without the ReLU mask", (5, 6, 3), "fc1",
             lambda g, v, Y: g["relu"], ("ReLU unmasked",)),
    ModelBug("ThreeLayerNet: dh1 = dz2 @ W2 instead of W2.T", (5, 6, 6, 3), "relu1",
             lambda g, v, Y: g["fc2"] @ v["fc2.weight"], ("instead of fc2.weight.T",)),
]


# -- the zoo: ops with a wrong derivative, found by gradcheck -----------------------------------
@dataclass(frozen=True)
class OpBug:
    description: str
    net: dict
    ops: dict  # keyword arguments of forward(): which op is replaced by a wrong one
    first_wrong: str
    words: tuple[str, ...]

    def report(self) -> mt.GradReport:
        net = build(**self.net)
        activation = self.ops.get("activation", ACTIVATIONS[net.activation])
        others = {k: v for k, v in self.ops.items() if k != "activation"}
        names = list(net.params)

        def loss(*params):
            return forward(dict(zip(names, params)), net.X, net.y, net.reg, activation, **others)

        return mt.gradcheck(loss, list(net.params.values()))


WRONG_OPS = {
    "relu with its sign flipped": mt.Op("relu", lambda x: np.maximum(x, 0), lambda g, out, x: -g * (x > 0)),
    "sigmoid from its input": mt.Op("sigmoid", _sigmoid, lambda g, out, x: g * x * (1 - x)),
    "tanh from its input": mt.Op("tanh", np.tanh, lambda g, out, x: g * (1 - x * x)),
    "log_softmax without its sum term": mt.Op("log_softmax", _log_softmax, lambda g, out, x, axis=-1: g),
    "mean without 1/N": mt.Op("mean", lambda x: np.mean(x), lambda g, out, x: g * np.ones_like(x)),
}

OP_BUGS = [
    OpBug("an op relu whose derivative has the sign flipped", TWO,
          {"activation": WRONG_OPS["relu with its sign flipped"]}, "b1",
          ("backward rule of relu", "sign flipped")),
    OpBug("an op sigmoid whose derivative uses its input", SIGMOID,
          {"activation": WRONG_OPS["sigmoid from its input"]}, "b1",
          ("backward rule of sigmoid", "pre-activation")),
    OpBug("an op tanh whose derivative uses its input", TANH,
          {"activation": WRONG_OPS["tanh from its input"]}, "b1",
          ("backward rule of tanh", "pre-activation")),
    OpBug("an op log_softmax whose derivative misses softmax * sum(g)", THREE,
          {"log_softmax": WRONG_OPS["log_softmax without its sum term"]}, "b3",
          ("backward rule of log_softmax", "softmax * sum(g)")),
    OpBug("an op mean whose derivative misses 1/N", THREE,
          {"mean": WRONG_OPS["mean without 1/N"]}, "b3", ("backward rule of mean", "N = 8")),
]

ZOO = MANUAL_BUGS + MODEL_BUGS + OP_BUGS


@pytest.mark.parametrize("bug", ZOO, ids=lambda b: b.description)
def test_each_bug_gives_a_falsy_report(bug):
    assert not bug.report()


@pytest.mark.parametrize("bug", ZOO, ids=lambda b: b.description)
def test_each_bug_is_localised_by_first_wrong(bug):
    assert bug.report().first_wrong == bug.first_wrong


@pytest.mark.parametrize("bug", ZOO, ids=lambda b: b.description)
def test_each_bug_is_named_by_the_diagnosis(bug):
    diagnosis = bug.report()[bug.first_wrong].diagnosis
    for words in bug.words:
        assert words in diagnosis, diagnosis


def test_the_zoo_has_at_least_fifteen_bugs_on_two_and_three_layer_nets():
    assert len(ZOO) >= 15
    assert {len(bug.net["sizes"]) for bug in ZOO} == {3, 4}


# Each correct net in float64 and in float32, whose rounding must not read as a mistake.
CORRECT_NETS = [dict(net, seed=seed, dtype=dtype) for dtype in (np.float64, np.float32)
                for net in (TWO, THREE, SIGMOID, TANH) for seed in range(10)]


@pytest.mark.parametrize("net", CORRECT_NETS, ids=str)
def test_the_correct_backward_passes_on_every_zoo_net(net):
    built = build(**net)
    assert mt.check_manual(built.loss, backward(built))


# -- the measured rates, as quoted in docs/checking.md --------------------------------------------
def measure() -> str:
    """The zoo's detection, localisation and diagnosis rates, and false alarms on correct backprop."""
    detected = localised = named = 0
    for bug in ZOO:
        report = bug.report()
        detected += not report
        localised += report.first_wrong == bug.first_wrong
        named += report.first_wrong == bug.first_wrong and all(
            w in report[bug.first_wrong].diagnosis for w in bug.words)
    alarms = sum(not mt.check_manual(b.loss, backward(b)) for b in (build(**net) for net in CORRECT_NETS))
    n = len(ZOO)
    return (f"bugs in the zoo:                 {n} ({len(MANUAL_BUGS)} in hand-written backprop, "
            f"{len(MODEL_BUGS)} on nn models, {len(OP_BUGS)} in op derivatives)\n"
            f"detected (report falsy):         {detected}/{n}\n"
            f"localised (first_wrong right):   {localised}/{n}\n"
            f"diagnosed (mistake named):       {named}/{n}\n"
            f"false alarms on correct backprop: {alarms}/{len(CORRECT_NETS)} (half of them in float32)")


def test_documented_rates_are_the_measured_rates():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "checking.md").read_text()
    block = re.search(r"```text\n(bugs in the zoo:.*?)\n```", doc, re.S)
    assert block is not None, "docs/checking.md has no block of measured rates"
    assert block.group(1) == measure()


if __name__ == "__main__":
    sys.exit(print(measure()))
