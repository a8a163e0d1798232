"""The pictures of the built-in models' loss graphs, compared with saved DOT files.

When the picture changes on purpose, regenerate the files from the repository root with
``python -m tests.test_graph_golden`` and review the diff before committing it; add
``--pictures`` to redraw the PNGs in docs/images/ too (needs Graphviz's ``dot``).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import numpy as np
import pytest

import microtensor as mt
import nn

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
PICTURES = ROOT / "docs" / "images"
REGENERATE = "python -m tests.test_graph_golden"


def batch(in_features: int, classes: int) -> tuple[mt.Tensor, np.ndarray]:
    """A fixed float64 batch of 8 samples and their int labels."""
    rng = np.random.default_rng(0)
    return mt.Tensor(rng.standard_normal((8, in_features)), name="X"), rng.integers(0, classes, size=8)


def trained_loss(model: nn.Module) -> tuple[nn.Module, mt.Tensor]:
    """The model's cross-entropy on the batch, after backward (the graph stays drawable)."""
    X, y = batch(4, 3)
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    return model, loss


def two_layer() -> tuple[nn.Module, mt.Tensor]:
    return trained_loss(nn.TwoLayerNet(4, 5, 3, seed=0, dtype=np.float64))


def three_layer() -> tuple[nn.Module, mt.Tensor]:
    return trained_loss(nn.ThreeLayerNet(4, 6, 5, 3, seed=0, dtype=np.float64))


def manual_backprop_missing_one_over_n() -> tuple[mt.Tensor, dict]:
    """A two-layer net written as tensor expressions, and a hand-written backprop that
    forgets the 1/N of the mean: the options that draw the check_manual report."""
    X, y = batch(4, 3)
    rng = np.random.default_rng(1)
    W1 = mt.Tensor(rng.standard_normal((4, 5)) * 0.5, requires_grad=True, name="W1")
    b1 = mt.Tensor(np.zeros(5), requires_grad=True, name="b1")
    W2 = mt.Tensor(rng.standard_normal((5, 3)) * 0.5, requires_grad=True, name="W2")
    b2 = mt.Tensor(np.zeros(3), requires_grad=True, name="b2")
    h = (X @ W1 + b1).relu().named("h")
    scores = (h @ W2 + b2).named("scores")
    loss = -scores.log_softmax()[np.arange(8), y].mean()
    p = np.exp(scores.data - scores.data.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dscores = p - np.eye(3)[y]  # the bug: should be divided by N = 8
    dh = (dscores @ W2.data.T) * (h.data > 0)
    manual = {"scores": dscores, "W2": h.data.T @ dscores, "b2": dscores.sum(axis=0),
              "h": dh, "W1": X.data.T @ dh, "b1": dh.sum(axis=0)}
    return loss, {"report": mt.check_manual(loss, manual)}


def drawn(build, **options):
    """The output of ``build`` and the options to draw it with (parameter names included)."""
    model, loss = build()
    return loss, {"params": model.named_parameters(), **options}


CASES = {
    "two_layer_loss.dot": lambda: drawn(two_layer),
    "three_layer_loss.dot": lambda: drawn(three_layer),
    "three_layer_loss_collapsed.dot": lambda: drawn(three_layer, collapse=True),
}
DOC_PICTURES = {
    "two_layer_loss.png": lambda: drawn(two_layer, show_grad=True),
    "three_layer_loss.png": lambda: drawn(three_layer),
    "three_layer_loss_collapsed.png": lambda: drawn(three_layer, collapse=True),
    "manual_backprop_mismatch.png": manual_backprop_missing_one_over_n,
}


@pytest.mark.parametrize("filename", CASES)
def test_dot_source_matches_the_saved_golden_file(filename):
    expected = (GOLDEN / filename).read_text()
    output, options = CASES[filename]()
    actual = mt.to_dot(output, **options)
    diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        f"tests/golden/{filename}", "to_dot(...) now"))
    assert actual == expected, f"the picture changed; if on purpose, run `{REGENERATE}`\n{diff}"


def regenerate(pictures: bool) -> None:
    targets = [(GOLDEN / name, build) for name, build in CASES.items()]
    if pictures:
        targets += [(PICTURES / name, build) for name, build in DOC_PICTURES.items()]
    for path, build in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        output, options = build()
        mt.render_graph(output, path, **options)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    regenerate(pictures="--pictures" in sys.argv[1:])
