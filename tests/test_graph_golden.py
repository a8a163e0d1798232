"""The pictures of the built-in models' loss graphs, compared with saved DOT files.

When the picture changes on purpose, regenerate the files from the repository root with
``python -m tests.test_graph_golden`` and review the diff before committing it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pytest

import microtensor as mt
import nn

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = "python -m tests.test_graph_golden"


def loss_graph(model: nn.Module, in_features: int, classes: int) -> mt.Tensor:
    """Cross-entropy of ``model`` on a fixed batch of 8 float64 samples."""
    rng = np.random.default_rng(0)
    X = mt.Tensor(rng.standard_normal((8, in_features)), name="X")
    y = rng.integers(0, classes, size=8)
    return nn.functional.cross_entropy(model(X), y)


def two_layer(**options) -> str:
    model = nn.TwoLayerNet(4, 5, 3, seed=0, dtype=np.float64)
    return mt.to_dot(loss_graph(model, 4, 3), params=model.named_parameters(), **options)


def three_layer(**options) -> str:
    model = nn.ThreeLayerNet(4, 6, 5, 3, seed=0, dtype=np.float64)
    return mt.to_dot(loss_graph(model, 4, 3), params=model.named_parameters(), **options)


CASES = {
    "two_layer_loss.dot": lambda: two_layer(),
    "three_layer_loss.dot": lambda: three_layer(),
    "three_layer_loss_collapsed.dot": lambda: three_layer(collapse=True),
}


@pytest.mark.parametrize("filename", CASES)
def test_dot_source_matches_the_saved_golden_file(filename):
    expected = (GOLDEN / filename).read_text()
    actual = CASES[filename]()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        f"tests/golden/{filename}", "to_dot(...) now"))
    assert actual == expected, f"the picture changed; if on purpose, run `{REGENERATE}`\n{diff}"


def regenerate() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for filename, build in CASES.items():
        (GOLDEN / filename).write_text(build())
        print(f"wrote tests/golden/{filename}")


if __name__ == "__main__":
    regenerate()
