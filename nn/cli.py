"""The ``microtensor`` command line (it lives in nn: it drives models, and the engine never imports nn)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import microtensor as mt


def _demo(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    W1 = mt.Tensor(rng.standard_normal((2, 16)) * 0.5, requires_grad=True, name="W1")
    b1 = mt.Tensor(np.zeros(16), requires_grad=True, name="b1")
    W2 = mt.Tensor(rng.standard_normal((16, 2)) * 0.5, requires_grad=True, name="W2")
    b2 = mt.Tensor(np.zeros(2), requires_grad=True, name="b2")
    params = [W1, b1, W2, b2]
    for step in range(201):
        h = (X @ W1 + b1).relu().named("h")
        logp = (h @ W2 + b2).log_softmax(axis=-1).named("logp")
        loss = -logp[np.arange(len(y)), y].mean()
        if step == 0:
            print("The tape of the loss:\n" + str(mt.tape(loss)) + "\n")
        loss.backward()
        for p in params:
            p.data -= 0.5 * p.grad
            p.zero_grad()
        if step % 50 == 0:
            accuracy = (logp.data.argmax(axis=1) == y).mean()
            print(f"step {step:3d}  loss {loss.item():.4f}  accuracy {accuracy:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microtensor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="train a small network written as tensor expressions")
    args = parser.parse_args(argv)
    return {"demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
