"""The catalogue of bad inputs: each one is a clear error that names the op or function and
the shapes, dtypes or values involved, never a wrong number, a NumPy warning or a crash
deep inside NumPy. docs/reliability.md shows the same table and its size."""

from __future__ import annotations

import operator
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import microtensor as mt
import nn
from microtensor import Tensor
from nn import functional as F
from nn.optim import SGD, Adam

# A warning on the way to an error is a leak too.
pytestmark = pytest.mark.filterwarnings("error")


class Bad(NamedTuple):
    """One bad input: what to run, the error it must raise, a regex its message must match."""

    id: str
    run: Any
    error: type[Exception]
    message: str


def ones(*shape: int, grad: bool = True) -> Tensor:
    return Tensor(np.ones(shape), requires_grad=grad)


def logits(n: int = 2, classes: int = 3) -> Tensor:
    return Tensor(np.zeros((n, classes)), requires_grad=True)


def model() -> nn.TwoLayerNet:
    return nn.TwoLayerNet(2, 3, 2, seed=0)


# -- shapes -------------------------------------------------------------------------------------
BINARY_OPS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "pow": operator.pow, "greater": operator.gt, "less": operator.lt, "greater_equal": operator.ge,
    "less_equal": operator.le, "equal": operator.eq, "not_equal": operator.ne,
}

BROADCAST = [
    Bad(f"{name} (2, 3) with (4, 5)", lambda f=f: f(ones(2, 3), ones(4, 5)), ValueError,
        rf"^{name}: shapes \(2, 3\) and \(4, 5\) do not broadcast: axis -1 has sizes 3 and 5")
    for name, f in BINARY_OPS.items()
] + [
    Bad("ndarray + tensor", lambda: np.ones(4) + ones(2, 3), ValueError,
        r"^add: shapes \(4,\) and \(2, 3\) do not broadcast: axis -1 has sizes 4 and 3"),
    Bad("mismatch on a leading axis", lambda: ones(2, 3) * ones(4, 3), ValueError,
        r"^mul: shapes \(2, 3\) and \(4, 3\) do not broadcast: axis -2 has sizes 2 and 4"),
    Bad("functional form mt.sub", lambda: mt.sub(ones(3), np.ones(2)), ValueError,
        r"^sub: shapes \(3,\) and \(2,\) do not broadcast"),
    Bad("mse_loss of unequal shapes", lambda: F.mse_loss(ones(3), np.zeros((3, 1))), ValueError,
        r"^mse_loss: pred has shape \(3,\) but target has shape \(3, 1\)"),
]

MATMUL = [
    Bad("1-D @ 1-D", lambda: ones(3) @ ones(4), ValueError,
        r"^matmul: cannot multiply shapes \(3,\) and \(4,\): the first's last axis \(3\) must equal "
        r"the second's length \(4\)"),
    Bad("2-D @ 2-D", lambda: ones(2, 3) @ ones(2, 3), ValueError,
        r"^matmul: cannot multiply shapes \(2, 3\) and \(2, 3\): the first's last axis \(3\) must "
        r"equal the second's second-to-last axis \(2\)"),
    Bad("1-D @ 2-D", lambda: ones(3) @ ones(4, 2), ValueError,
        r"^matmul: cannot multiply shapes \(3,\) and \(4, 2\)"),
    Bad("2-D @ 1-D", lambda: ones(2, 3) @ ones(4), ValueError,
        r"^matmul: cannot multiply shapes \(2, 3\) and \(4,\): .* length \(4\)"),
    Bad("batched, inner sizes", lambda: ones(2, 3, 4) @ ones(2, 5, 6), ValueError,
        r"^matmul: cannot multiply shapes \(2, 3, 4\) and \(2, 5, 6\): the first's last axis \(4\)"),
    Bad("batched, batch shapes", lambda: ones(2, 3, 4) @ ones(3, 4, 5), ValueError,
        r"^matmul: cannot multiply shapes \(2, 3, 4\) and \(3, 4, 5\): their batch shapes \(2,\) and "
        r"\(3,\) do not broadcast"),
    Bad("scalar @ vector", lambda: ones() @ ones(3), ValueError,
        r"^matmul: cannot multiply shapes \(\) and \(3,\): both need at least one axis"),
    Bad("ndarray @ tensor", lambda: np.ones((5, 2)) @ ones(3, 4), ValueError,
        r"^matmul: cannot multiply shapes \(5, 2\) and \(3, 4\)"),
    Bad("linear, x and weight", lambda: mt.linear(ones(2, 3), ones(4, 2), ones(2)), ValueError,
        r"^linear: cannot multiply shapes \(2, 3\) and \(4, 2\)"),
    Bad("linear, bias", lambda: mt.linear(ones(2, 3), ones(3, 2), ones(5)), ValueError,
        r"^linear: bias of shape \(5,\) does not fit x @ weight of shape \(2, 2\): "
        r"axis -1 has sizes 2 and 5"),
    Bad("nn.Linear, wrong number of features", lambda: nn.Linear(4, 2, seed=0)(np.ones((3, 5), np.float32)),
        ValueError, r"^linear: cannot multiply shapes \(3, 5\) and \(4, 2\).*float32"),
]

AXIS_OPS = ["log_softmax", "softmax", "sum", "mean", "max"]
AXES = [
    Bad(f"{name}(axis={axis}) of a 2-D tensor",
        lambda name=name, axis=axis: getattr(ones(2, 3), name)(axis=axis), np.exceptions.AxisError,
        rf"^{name}: axis {axis} is out of bounds for array of dimension 2 \(input shapes: \(2, 3\)")
    for name in AXIS_OPS for axis in (2, -3)
] + [
    Bad("sum over axes (0, 5)", lambda: ones(2, 3).sum(axis=(0, 5)), np.exceptions.AxisError,
        r"^sum: axis 5 is out of bounds"),
    Bad("transpose with a bad axis", lambda: ones(2, 3).transpose(0, 2), np.exceptions.AxisError,
        r"^transpose: axis 2 is out of bounds"),
    Bad("reshape to another size", lambda: ones(2, 3).reshape(4, 2), ValueError,
        r"^reshape: cannot reshape array of size 6 into shape \(4,\s?2\)"),
    Bad("index past the end", lambda: ones(2, 3)[5], IndexError,
        r"^getitem: index 5 is out of bounds for axis 0 with size 2"),
]

# -- dtypes and odd data ------------------------------------------------------------------------
NOT_FLOATING = {
    "integer": [1, 2], "bool": [True, False], "complex": [1j], "object": np.array([object()]),
    "string": "abc", "bytes": b"abc",
}
DTYPES = [
    Bad(f"{kind} data with requires_grad", lambda data=data: Tensor(data, requires_grad=True), TypeError,
        rf"^Tensor: only floating-point tensors can require gradients, got dtype \S+ \({kind}\)")
    for kind, data in NOT_FLOATING.items()
] + [
    Bad("nn.Parameter of integers", lambda: nn.Parameter([1, 2]), TypeError, r"got dtype int64 \(integer\)"),
    Bad("integer data assigned to .data", lambda: setattr(ones(2), "data", np.array([1, 2])), TypeError,
        r"^Tensor.data: only floating-point .* got dtype int64"),
    Bad("astype to an integer dtype with requires_grad", lambda: ones(2).astype(np.int32), TypeError,
        r"^Tensor.astype: only floating-point .* got dtype int32"),
    Bad("backward through a complex constant", lambda: (ones(2) * 1j).sum().backward(), TypeError,
        r"^backward: the output has dtype complex128, but gradients need a floating-point output"),
    Bad("astype of a complex result", lambda: (ones(2) * 1j).astype(np.float64), TypeError,
        r"^Tensor.astype: .* got dtype complex128"),
    Bad("strings in arithmetic", lambda: Tensor(["a", "b"]) + ones(2), TypeError,
        r"^add: .*did not contain a loop.*\(input shapes: \(2,\), \(2,\); dtypes: <U1, float64\)"),
    Bad("a string constant", lambda: ones(2) * "x", TypeError, r"^mul: .*dtypes: float64, str\)"),
    Bad("objects without arithmetic", lambda: Tensor(np.array([{}])) + 1, TypeError,
        r"^add: unsupported operand type\(s\) for \+: 'dict' and 'int'.*dtypes: object, int"),
    Bad("a ragged list", lambda: Tensor([[1.0], [1.0, 2.0]]), TypeError,
        r"^Tensor: cannot make an array of list: .*inhomogeneous"),
    Bad("a ragged constant in an op", lambda: ones(2, 3) + [[1.0], [1.0, 2.0]], ValueError,
        r"^add: .*inhomogeneous.*dtypes: float64, list"),
    Bad("integers to a negative power", lambda: Tensor([2]) ** -1, ValueError,
        r"^pow: Integers to negative integer powers are not allowed"),
]

# -- empty batches ------------------------------------------------------------------------------
EMPTY = [
    Bad("cross_entropy of an empty batch", lambda: F.cross_entropy(logits(0), np.zeros(0, int)), ValueError,
        r"^cross_entropy: logits of shape \(0, 3\) are empty; a mean loss over no examples is undefined"),
    Bad("cross_entropy of an empty one-hot batch", lambda: F.cross_entropy(logits(0), np.zeros((0, 3))),
        ValueError, r"^cross_entropy: logits of shape \(0, 3\) are empty"),
    Bad("cross_entropy with zero classes", lambda: F.cross_entropy(logits(2, 0), np.zeros(2, int)),
        ValueError, r"^cross_entropy: logits of shape \(2, 0\) are empty"),
    Bad("nll_loss of an empty batch", lambda: F.nll_loss(logits(0), np.zeros(0, int)), ValueError,
        r"^nll_loss: log-probs of shape \(0, 3\) are empty"),
    Bad("mse_loss of an empty batch", lambda: F.mse_loss(ones(0, 3), np.zeros((0, 3))), ValueError,
        r"^mse_loss: predictions of shape \(0, 3\) are empty"),
    Bad("mt.softmax_cross_entropy of an empty batch",
        lambda: mt.softmax_cross_entropy(logits(0), np.zeros(0, int)), ValueError,
        r"^softmax_cross_entropy: the batch is empty.*\(input shapes: \(0, 3\), \(0,\)"),
    Bad("max of an empty tensor", lambda: ones(0, 3).max(), ValueError,
        r"^max: zero-size array .* \(input shapes: \(0, 3\)"),
    Bad("log_softmax over an empty axis", lambda: ones(0, 3).log_softmax(axis=0), ValueError,
        r"^log_softmax: zero-size array"),
]

# -- targets ------------------------------------------------------------------------------------
TARGETS = [
    Bad("cross_entropy, label too large", lambda: F.cross_entropy(logits(), np.array([0, 3])), IndexError,
        r"^softmax_cross_entropy: labels must be in \[0, 3\) for 3 classes, got 3 \(1 out of range\)"),
    Bad("cross_entropy, label far too large", lambda: F.cross_entropy(logits(), np.array([7, 9])), IndexError,
        r"got 7 \(2 out of range\)"),
    Bad("cross_entropy, negative label", lambda: F.cross_entropy(logits(), np.array([0, -1])), IndexError,
        r"^softmax_cross_entropy: labels must be in \[0, 3\) for 3 classes, got -1"),
    Bad("cross_entropy, float labels", lambda: F.cross_entropy(logits(), np.array([0.0, 1.0])), ValueError,
        r"^cross_entropy: targets of shape \(2,\) and dtype float64 do not match logits of shape \(2, 3\)"),
    Bad("cross_entropy, bool labels", lambda: F.cross_entropy(logits(), np.array([True, False])), ValueError,
        r"dtype bool do not match logits"),
    Bad("cross_entropy, string labels", lambda: F.cross_entropy(logits(), np.array(["a", "b"])), ValueError,
        r"dtype <U1 do not match logits"),
    Bad("cross_entropy, too many labels", lambda: F.cross_entropy(logits(), np.array([0, 1, 2])), ValueError,
        r"^cross_entropy: labels of shape \(3,\) do not match logits of shape \(2, 3\)"),
    Bad("cross_entropy, labels as a column", lambda: F.cross_entropy(logits(), np.array([[0], [1]])),
        ValueError, r"targets of shape \(2, 1\) and dtype int64 do not match logits of shape \(2, 3\)"),
    Bad("cross_entropy, one-hot too wide", lambda: F.cross_entropy(logits(), np.eye(4)[:2]), ValueError,
        r"^cross_entropy: targets of shape \(2, 4\) and dtype float64 do not match logits of shape \(2, 3\)"),
    Bad("cross_entropy, one-hot too narrow", lambda: F.cross_entropy(logits(), np.eye(2)), ValueError,
        r"targets of shape \(2, 2\) .* logits of shape \(2, 3\)"),
    Bad("cross_entropy, 1-D logits", lambda: F.cross_entropy(ones(3), np.array([0])), ValueError,
        r"^cross_entropy: labels of shape \(1,\) do not match logits of shape \(3,\)"),
    Bad("nll_loss, one-hot too wide", lambda: F.nll_loss(logits(), np.eye(4)[:2]), ValueError,
        r"^nll_loss: targets of shape \(2, 4\)"),
    Bad("nll_loss, negative label", lambda: F.nll_loss(logits(), np.array([0, -2])), IndexError,
        r"^nll_loss: labels must be in \[0, 3\), got -2"),
    Bad("nll_loss, label too large", lambda: F.nll_loss(logits(), np.array([0, 3])), IndexError,
        r"^nll_loss: labels must be in \[0, 3\), got 3"),
    Bad("mt.softmax_cross_entropy, negative label",
        lambda: mt.softmax_cross_entropy(logits(), np.array([0, -1])), IndexError,
        r"^softmax_cross_entropy: labels must be in \[0, 3\) for 3 classes, got -1"),
    Bad("mt.softmax_cross_entropy, float labels",
        lambda: mt.softmax_cross_entropy(logits(), np.array([0.0, 1.0])), TypeError,
        r"^softmax_cross_entropy: labels must be integers, got dtype float64"),
    Bad("mt.softmax_cross_entropy, wrong shapes",
        lambda: mt.softmax_cross_entropy(logits(), np.zeros(5, int)), ValueError,
        r"^softmax_cross_entropy: logits must have shape \(N, C\).*\(2, 3\), \(5,\)"),
]

# -- backward -----------------------------------------------------------------------------------
def backward_twice() -> None:
    loss = (ones(2) * 3.0).sum()
    loss.backward()
    loss.backward()


BACKWARD = [
    Bad("backward on a non-scalar", lambda: (ones(2, 3) * 2).backward(), ValueError,
        r"^backward: grad can be implicitly created only for scalar outputs, "
        r"but the output has shape \(2, 3\)"),
    Bad("gradient of the wrong shape", lambda: (ones(2, 3) * 2).backward(np.ones(3)), ValueError,
        r"^backward: gradient has shape \(3,\) but the output has shape \(2, 3\)"),
    Bad("gradient that only broadcasts", lambda: (ones(2, 3) * 2).backward(np.ones((1, 3))), ValueError,
        r"^backward: gradient has shape \(1, 3\) but the output has shape \(2, 3\)"),
    Bad("transposed gradient tensor", lambda: (ones(2, 3) * 2).backward(Tensor(np.ones((3, 2)))), ValueError,
        r"gradient has shape \(3, 2\) but the output has shape \(2, 3\)"),
    Bad("gradient for a scalar of the wrong shape", lambda: ones(3).sum().backward(np.ones(3)), ValueError,
        r"gradient has shape \(3,\) but the output has shape \(\)"),
    Bad("gradient of strings", lambda: (ones(2) * 2).backward(["a", "b"]), TypeError,
        r"^backward: gradient must hold real numbers, got dtype <U1"),
    Bad("complex gradient", lambda: (ones(2) * 2).backward(np.ones(2) * 1j), TypeError,
        r"^backward: gradient must hold real numbers, got dtype complex128"),
    Bad("backward of a tensor without a graph", lambda: ones(2, grad=False).sum().backward(), RuntimeError,
        r"^backward: the output does not require grad"),
    Bad("backward twice through a freed graph", backward_twice, RuntimeError, r"retain_graph=True"),
    Bad("mt.grad for an input without requires_grad", lambda: mt.grad(ones(2).sum(), ones(2, grad=False)),
        ValueError, r"^grad: every input must be a Tensor with requires_grad=True"),
]

# -- load_state_dict (each also leaves the model unchanged, see below) ---------------------------
STATES = {
    "missing entry": (lambda s: {k: v for k, v in s.items() if k != "fc1.bias"},
                      r"missing keys \['fc1.bias'\]"),
    "extra entry": (lambda s: {**s, "fc3.weight": np.zeros(2)}, r"unexpected keys \['fc3.weight'\]"),
    "mis-shaped entry": (lambda s: {**s, "fc2.weight": np.zeros((2, 3), np.float32)},
                         r"'fc2.weight' has shape \(2, 3\), expected \(3, 2\)"),
    "wrong dtype": (lambda s: {**s, "fc1.bias": np.zeros(3)},
                    r"'fc1.bias' has dtype float64, expected float32"),
    "a scalar for an array": (lambda s: {**s, "fc1.bias": "abc"},
                              r"'fc1.bias' has shape \(\), expected \(3,\)"),
}
STATE_DICT = [
    Bad(f"load_state_dict, {name}",
        lambda change=change: model().load_state_dict(change(model().state_dict())), nn.StateDictError,
        rf"^TwoLayerNet.load_state_dict: .*{message}")
    for name, (change, message) in STATES.items()
] + [
    Bad("load_state_dict, a list", lambda: model().load_state_dict([1, 2]), TypeError,
        r"^TwoLayerNet.load_state_dict: expected a mapping of parameter names to arrays .*got a list"),
    Bad("load_state_dict into a read-only parameter", lambda: load_into_read_only(), ValueError,
        r"^TwoLayerNet.load_state_dict: parameters \['fc2.weight'\] hold read-only arrays"),
]


def read_only(*shape: int, dtype: Any = np.float64) -> np.ndarray:
    """Zeros in memory nothing may write to, as np.frombuffer of bytes gives."""
    return np.frombuffer(bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize), dtype).reshape(shape)


def load_into_read_only() -> None:
    target = model()
    target.fc2.weight.data = read_only(3, 2, dtype=np.float32)
    target.load_state_dict(model().state_dict())

# -- optimizers ---------------------------------------------------------------------------------
def weight() -> Tensor:
    return ones(2)


def step_of_read_only(optimizer: type) -> None:
    w = Tensor(read_only(2), requires_grad=True)
    opt = optimizer([w], lr=0.1)
    w.sum().backward()
    opt.step()


def shared_twice() -> None:
    p = weight()
    SGD([{"params": [p]}, {"params": [p], "lr": 0.5}], lr=0.1)


OPTIMIZERS = [
    Bad("SGD with no parameters", lambda: SGD([], lr=0.1), ValueError, r"^SGD: got an empty parameter list"),
    Bad("Adam with an exhausted generator", lambda: Adam(iter([])), ValueError,
        r"^Adam: got an empty parameter list"),
    Bad("SGD with a negative learning rate", lambda: SGD([weight()], lr=-0.1), ValueError,
        r"^SGD: invalid learning rate lr -0.1; it must be >= 0"),
    Bad("Adam with a negative learning rate", lambda: Adam([weight()], lr=-1e-3), ValueError,
        r"^Adam: invalid learning rate lr -0.001"),
    Bad("Adam with a nan learning rate", lambda: Adam([weight()], lr=float("nan")), ValueError,
        r"^Adam: invalid learning rate lr nan"),
    Bad("SGD with the learning rate as a string", lambda: SGD([weight()], lr="0.1"), TypeError,
        r"^SGD: learning rate lr must be a number, got '0.1'"),
    Bad("SGD given the model itself", lambda: SGD(model(), lr=0.1), TypeError,
        r"^SGD: params must be an iterable of Tensors such as model.parameters\(\).*got a TwoLayerNet"),
    Bad("SGD given a single tensor", lambda: SGD(weight(), lr=0.1), TypeError,
        r"^SGD: params must be .*got a Tensor"),
    Bad("SGD given a tensor without requires_grad", lambda: SGD([ones(2, grad=False)], lr=0.1), TypeError,
        r"^SGD: every parameter must be a Tensor with requires_grad=True, "
        r"got a Tensor with requires_grad=False"),
    Bad("SGD given arrays", lambda: SGD([np.ones(2)], lr=0.1), TypeError, r"got ndarray"),
    Bad("SGD given a computed tensor", lambda: SGD([weight() * 2], lr=0.1), ValueError,
        r"^SGD: cannot optimize a non-leaf tensor \(the result of mul\)"),
    Bad("SGD given a parameter twice", lambda: SGD([weight()] * 2, lr=0.1), ValueError,
        r"^SGD: a parameter appears more than once"),
    Bad("a parameter in two groups", shared_twice, ValueError, r"appears more than once"),
    Bad("Adam with one beta", lambda: Adam([weight()], betas=(0.9,)), ValueError,
        r"^Adam: betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    Bad("SGD with negative momentum", lambda: SGD([weight()], lr=0.1, momentum=-0.5), ValueError,
        r"^SGD: invalid momentum -0.5"),
    Bad("a parameter group without params", lambda: SGD([{"lr": 0.5}], lr=0.1), ValueError,
        r"^SGD: a parameter group must have a 'params' entry, got keys \['lr'\]"),
    Bad("SGD step of a read-only parameter", lambda: step_of_read_only(SGD), ValueError,
        r"^SGD.step: a parameter of shape \(2,\) holds a read-only array"),
    Bad("Adam step of a read-only parameter", lambda: step_of_read_only(Adam), ValueError,
        r"^Adam.step: a parameter of shape \(2,\) holds a read-only array"),
]

CATALOGUE = BROADCAST + MATMUL + AXES + DTYPES + EMPTY + TARGETS + BACKWARD + STATE_DICT + OPTIMIZERS


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.id for bad in CATALOGUE])
def test_bad_input_raises_a_clear_error_naming_what_is_wrong(bad):
    with pytest.raises(bad.error, match=bad.message):
        bad.run()


@pytest.mark.parametrize("name", STATES)
def test_a_rejected_state_dict_leaves_the_model_unchanged(name):
    change, message = STATES[name]
    target = model()
    before = target.state_dict()
    other = nn.TwoLayerNet(2, 3, 2, seed=1).state_dict()  # other values, so a partial load would show
    with pytest.raises(nn.StateDictError, match=message):
        target.load_state_dict(change(other))
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_the_catalogue_ids_are_unique():
    ids = [bad.id for bad in CATALOGUE]
    assert len(ids) == len(set(ids))


def test_docs_state_the_size_of_the_catalogue_and_their_table_adds_up_to_it():
    text = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    stated = re.search(r"(\d+) bad inputs are tried", text)
    table = text[text.index("| bad input |"):]
    table = table[:table.index("\n\n")]
    tried = [int(row.rsplit("|", 2)[1]) for row in table.splitlines()[2:]]
    assert stated is not None and int(stated.group(1)) == len(CATALOGUE)
    assert sum(tried) == len(CATALOGUE)


# -- found by tests/test_fuzz.py, kept as plain regressions ---------------------------------------
@pytest.mark.parametrize("with_list, with_array", [
    (lambda x: x ** [1.0, 2.0], lambda x: x ** np.array([1.0, 2.0])),
    (lambda x: [1.0, 2.0] ** x, lambda x: np.array([1.0, 2.0]) ** x),
    (lambda x: x @ [[1.0], [2.0]], lambda x: x @ np.array([[1.0], [2.0]])),
    (lambda x: x * (3.0, 4.0), lambda x: x * np.array([3.0, 4.0])),
], ids=["tensor ** list", "list ** tensor", "tensor @ nested list", "tensor * tuple"])
def test_list_and_tuple_constants_differentiate_like_the_arrays_they_stand_for(with_list, with_array):
    by_list, by_array = Tensor([2.0, 3.0], requires_grad=True), Tensor([2.0, 3.0], requires_grad=True)
    with_list(by_list).sum().backward()
    with_array(by_array).sum().backward()
    np.testing.assert_array_equal(by_list.grad, by_array.grad)


def test_a_0_d_tensor_reduced_over_axis_0_as_numpy_allows_has_a_gradient():
    x = Tensor(np.array(2.0), requires_grad=True)
    (x.sum(axis=0) * 3.0).backward()
    assert x.grad == 3.0
