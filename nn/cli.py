"""The ``microtensor`` command line: ``demo``, ``train``, ``check``, ``graph``, ``bench``.

It lives in nn because it drives models, and the engine never imports nn. Bad arguments
and missing files end with one line on stderr and exit status 2; ``check`` exits with 1
when gradients disagree.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import microtensor as mt
import nn
import nn.manual
from nn import bench, data
from nn.arguments import non_negative_float, non_negative_int, positive_int
from nn.checkpoint import writable_path

Split = tuple[np.ndarray, np.ndarray]


class CommandError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- data and models ------------------------------------------------------------------------
def load_dataset(name: str, data_dir: str | None, seed: int) -> tuple[Split, Split, Split]:
    """``(train, validation, test)`` of a named dataset, standardised with train's statistics.

    >>> (X, y), val, test = load_dataset("blobs", None, seed=0)
    >>> X.shape, len(val[0]), len(test[0])
    ((560, 2), 120, 120)
    """
    if name == "mnist":
        if data_dir is None:
            raise CommandError("--dataset mnist needs --data-dir DIR with the four MNIST files")
        (X, y), test = data.load_mnist(data_dir)
        train, val = data.train_val_split(X, y, val=0.1, seed=seed)
    else:
        X, y = data.load_digits() if name == "digits" else data.make_blobs(n_per_class=400, seed=seed)
        train, val, test = data.train_val_test_split(X, y, val=0.15, test=0.15, seed=seed)
    scaler = data.Standardizer(per_feature=False).fit(train[0])
    return tuple((scaler.transform(X), y) for X, y in (train, val, test))  # type: ignore[return-value]


def build_model(kind: str, sizes: Sequence[int], *, dropout: float = 0.0, seed: int = 0,
                dtype: Any = np.float32) -> nn.Module:
    """``two-layer``, ``three-layer`` or ``mlp`` through ``sizes`` (inputs, hidden..., classes).

    >>> type(build_model("three-layer", [64, 32, 16, 10])).__name__
    'ThreeLayerNet'
    """
    hidden = len(sizes) - 2
    if kind == "two-layer" and hidden == 1:
        return nn.TwoLayerNet(*sizes, seed=seed, dtype=dtype)
    if kind == "three-layer" and hidden == 2:
        return nn.ThreeLayerNet(*sizes, seed=seed, dtype=dtype)
    if kind == "mlp":
        return nn.MLP(list(sizes), dropout=dropout, seed=seed, dtype=dtype)
    raise CommandError(f"--model {kind} takes {1 if kind == 'two-layer' else 2} hidden sizes, "
                       f"got {hidden}: {list(sizes[1:-1])}")


def _model_choice(args: argparse.Namespace, inputs: int, classes: int) -> tuple[str, list[int]]:
    """The kind of model the options ask for, and its sizes (inputs, hidden..., classes)."""
    kind = args.model or ("mlp" if args.hidden else "two-layer")  # `--hidden 128 64` alone: an MLP
    default = {"two-layer": [64], "three-layer": [64, 32], "mlp": [128, 64]}[kind]
    return kind, [inputs, *(args.hidden or default), classes]


def _float64_copy(model: nn.Module, kind: str, sizes: Sequence[int]) -> nn.Module:
    """The same weights in float64: finite differences need the precision."""
    copy = build_model(kind, sizes, dtype=np.float64)
    copy.load_state_dict({name: value.astype(np.float64) for name, value in model.state_dict().items()})
    return copy


def _accuracy(model: nn.Module, split: Split) -> float:
    return nn.evaluate(model, *split)["accuracy"]


def _render_loss_graph(loss: mt.Tensor, model: nn.Module, stem: Path, show_grad: bool) -> str:
    """The loss graph as ``.svg`` when Graphviz's ``dot`` works, else as ``.dot`` with a hint."""
    params = dict(model.named_parameters())
    if not shutil.which("dot"):
        problem = "Graphviz's dot is not installed, so the graph is DOT source: install graphviz and run"
    else:
        try:
            return str(mt.render_graph(loss, stem.with_suffix(".svg"), params=params, show_grad=show_grad))
        except RuntimeError as err:  # dot is there but failed: the DOT source is still worth having
            problem = f"{' '.join(str(err).split())}; so the graph is DOT source: once dot works, run"
    path = mt.render_graph(loss, stem.with_suffix(".dot"), params=params, show_grad=show_grad)
    print(f"({problem} `dot -Tsvg {path} -o {stem.with_suffix('.svg')}` to draw it)")
    return str(path)


def _first(split: Split, size: int) -> Split:
    """The first ``size`` examples of the digits' training split (``--batch``), if it has them."""
    if size > len(split[0]):
        raise CommandError(f"--batch {size}: the digits' training split holds only {len(split[0])} "
                           f"examples")
    return split[0][:size], split[1][:size]


# -- demo -----------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("microtensor demo: a two-layer network on the 8x8 digits (1,797 images, shipped with nn)\n")
    train, val, test = load_dataset("digits", None, seed=args.seed)
    sizes = [64, 64, 10]
    model = build_model("two-layer", sizes, seed=args.seed)
    for name, parameter in model.named_parameters():
        parameter.named(name)  # so the tape listing says fc1.weight, not leaf0
    print("0. The network is tensor expressions; the ops of its loss, as recorded on the tape:\n")
    print(_indent(str(mt.tape(nn.functional.cross_entropy(model(train[0][:32]), train[1][:32])))) + "\n")
    print(f"1. Training TwoLayerNet{tuple(sizes)} (Linear-ReLU-Linear) with SGD + momentum, "
          f"weight decay 1e-3, {args.epochs} epochs:")
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    history = nn.fit(model, *train, epochs=args.epochs, batch_size=32, optimizer=opt,
                     scheduler=nn.optim.StepLR(opt, step_size=10, gamma=0.3),
                     validation_data=val, seed=args.seed, progress=True)
    print(f"\n   train accuracy {_accuracy(model, train):.3f}, validation {_accuracy(model, val):.3f}, "
          f"test {_accuracy(model, test):.3f} ({history.seconds[-1]:.1f} s)\n")

    model64 = _float64_copy(model, "two-layer", sizes)
    X, y = test[0][:32].astype(np.float64), test[1][:32]
    print("2. Gradients of the trained network's loss (32 test images, L2 reg 1e-3), three ways:\n"
          "   the tape, the hand-derived formulas (nn.manual), and finite differences\n")
    report = nn.manual.check(model64, X, y, reg=1e-3)
    print(_indent(str(report)) + "\n")

    print("3. The loss graph, with each parameter's gradient norm, and the trained model:\n")
    nn.save(model, out / "model.npz")  # the results first: drawing the graph is what may fail
    history_file = _write_history(history, out / "history.csv")
    loss = nn.manual.loss(model64, X, y, reg=1e-3)
    loss.backward()
    graph = _render_loss_graph(loss, model64, out / "loss_graph", show_grad=True)
    print("\n".join(f"   wrote {f}" for f in (graph, out / "model.npz", history_file)))
    return 0 if report else 1


def _indent(text: str) -> str:
    return "\n".join("   " + line if line else line for line in text.splitlines())


def _write_history(history: nn.History, path: Path) -> str:
    columns = {name: values for name, values in vars(history).items() if values}
    epochs = range(len(history.loss))
    if path.suffix == ".json":
        path.write_text(json.dumps({"epoch": [e + 1 for e in epochs], **columns}, indent=1) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *columns])
            writer.writerows([e + 1, *(values[e] for values in columns.values())] for e in epochs)
    else:
        raise CommandError(f"--history {path}: use a .csv or .json file name")
    return str(path)


# -- train ----------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    if args.history and Path(args.history).suffix not in (".csv", ".json"):
        raise CommandError(f"--history {args.history}: use a .csv or .json file name")
    if args.save and Path(args.save).suffix != ".npz":
        raise CommandError(f"--save {args.save}: checkpoints are .npz files")
    for option, path in (("--save", args.save), ("--history", args.history)):
        if path:
            writable_path(path, option)  # before training, not after it
    if args.dropout and (args.model or ("mlp" if args.hidden else "two-layer")) != "mlp":
        raise CommandError("--dropout needs an mlp (--model mlp, or --hidden sizes alone)")
    train, val, test = load_dataset(args.dataset, args.data_dir, args.seed)
    classes = int(max(y.max() for _, y in (train, val, test))) + 1
    kind, sizes = _model_choice(args, train[0].shape[1], classes)
    model = build_model(kind, sizes, dropout=args.dropout, seed=args.seed)
    settings = dict(lr=args.lr, weight_decay=args.weight_decay)
    opt = (nn.optim.Adam(model.parameters(), **settings) if args.optimizer == "adam" else
           nn.optim.SGD(model.parameters(), momentum=args.momentum, **settings))
    print(f"{type(model).__name__}{tuple(sizes)} on {args.dataset}: {len(train[0])} training, "
          f"{len(val[0])} validation, {len(test[0])} test examples")
    # NumPy's overflow warnings on the way to a divergence say nothing the error below does not.
    with np.errstate(all="ignore"):
        try:
            history = nn.fit(model, *train, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                             validation_data=val, seed=args.seed, progress=True)
        except nn.train.TrainingDiverged as err:
            raise CommandError(f"training diverged in epoch {err.epoch}: {err.reason}; try a smaller --lr "
                               f"than {args.lr:g}") from None
        print(f"test accuracy {_accuracy(model, test):.4f}")
    if args.save:
        nn.save(model, args.save)
        print(f"wrote {args.save}")
    if args.history:
        print(f"wrote {_write_history(history, Path(args.history))}")
    return 0


# -- check ----------------------------------------------------------------------------------
MANUAL_SIGNATURE = """\
A --manual file defines

    def backward(weights, X, y, reg):
        ...
        return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

weights holds "W1", "b1", "W2", "b2" (and "W3", "b3" for --model three-layer) as arrays,
W of shape (inputs, outputs) so that the forward is X @ W + b; y holds int labels; the loss
is the mean softmax cross-entropy plus 0.5 * reg * sum(W ** 2) over the weights. The dict
may also hold the gradients of intermediates, "z1", "h1", ... (each layer's pre-activation
and ReLU output) and "scores" (the logits), to find the first wrong step."""


def _check(args: argparse.Namespace) -> int:
    train, _, _ = load_dataset("digits", None, args.seed)
    X, y = _first(train, args.batch)
    X = X.astype(np.float64)
    kind, sizes = _model_choice(args, X.shape[1], 10)
    model = build_model(kind, sizes, seed=args.seed, dtype=np.float64)
    if args.manual is None:
        report = nn.manual.check(model, X, y, reg=args.reg)
    else:
        report = _check_users_backward(args.manual, model, X, y, args.reg)
    print(report)
    return 0 if report else 1


def _load_users_backward(path: str) -> Callable[..., Any]:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--manual {path}: no such file")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as err:  # the user's file: report its error, not our traceback
        raise CommandError(f"--manual {path}: running it failed: {type(err).__name__}: {err}") from None
    if not callable(getattr(module, "backward", None)):
        raise CommandError(f"--manual {path}: it defines no backward(weights, X, y, reg) function")
    return module.backward


def notebook_loss(model: nn.Module, X: np.ndarray, y: np.ndarray, reg: float) -> tuple[mt.Tensor, dict]:
    """The loss as tensor expressions over the notebooks' names: weights W1, b1, ... and
    intermediates z1, h1, ..., scores, so a hand-written backward can be checked step by step.

    >>> loss, weights = notebook_loss(nn.TwoLayerNet(2, 3, 2, seed=0), np.ones((4, 2)), np.zeros(4, int), 0.0)
    >>> sorted(weights)
    ['W1', 'W2', 'b1', 'b2']
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights: dict[str, mt.Tensor] = {}
    h: Any = X
    for k, layer in enumerate(layers, start=1):
        W = mt.Tensor(layer.weight.data, requires_grad=True, name=f"W{k}")
        b = mt.Tensor(layer.bias.data, requires_grad=True, name=f"b{k}")
        weights.update({W.name: W, b.name: b})
        z = (h @ W + b).named("scores" if k == len(layers) else f"z{k}")
        h = z if k == len(layers) else z.relu().named(f"h{k}")
    penalty = nn.functional.l2_penalty([w for name, w in weights.items() if name.startswith("W")], reg)
    return nn.functional.cross_entropy(h, y) + penalty, weights


def _check_users_backward(path: str, model: nn.Module, X: np.ndarray, y: np.ndarray,
                          reg: float) -> mt.GradReport:
    backward = _load_users_backward(path)
    loss, weights = notebook_loss(model, X, y, reg)
    try:
        grads = backward({name: w.data.copy() for name, w in weights.items()}, X.copy(), y.copy(), reg)
    except Exception as err:
        raise CommandError(f"--manual {path}: backward() raised {type(err).__name__}: {err}") from None
    if not isinstance(grads, dict) or not grads:
        raise CommandError(f"--manual {path}: backward() must return a dict of gradients by name")
    try:
        return mt.check_manual(loss, grads)
    except (TypeError, ValueError) as err:  # a name the graph lacks, a gradient that is not numbers
        raise CommandError(f"--manual {path}: {err}") from None


# -- graph ----------------------------------------------------------------------------------
def _graph(args: argparse.Namespace) -> int:
    out = writable_path(args.out, "--out")  # else the engine's error would name its temporary file
    train, _, _ = load_dataset("digits", None, args.seed)
    X, y = _first(train, args.batch)
    kind, sizes = _model_choice(args, X.shape[1], 10)
    model = build_model(kind, sizes, seed=args.seed)
    loss = nn.functional.cross_entropy(model(X), y)
    if args.grad:
        loss.backward()
    try:
        mt.render_graph(loss, out, params=model.named_parameters(), show_grad=args.grad,
                        collapse=args.collapse)
    except RuntimeError as err:  # Graphviz's dot is missing, or failed: its message says what to do
        raise CommandError(" ".join(str(err).split())) from None
    print(f"wrote {args.out}")
    return 0


# -- bench ----------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    return bench.run_command(args)


# -- the parser -----------------------------------------------------------------------------
def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["two-layer", "three-layer", "mlp"],
                        help="two-layer (Linear-ReLU-Linear), three-layer or mlp (default: two-layer, "
                             "or mlp when --hidden is given)")
    parser.add_argument("--hidden", type=positive_int, nargs="+", metavar="H",
                        help="hidden sizes (two-layer: one, three-layer: two, mlp: any; "
                             "default 64 / 64 32 / 128 64)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for data splits and weights")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``microtensor`` command."""
    parser = _Parser(prog="microtensor", description="A small autograd engine that checks your backprop.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="train on the digits, check gradients three ways, draw the graph")
    demo.add_argument("--out", default="microtensor-demo", help="where to write (default: %(default)s)")
    demo.add_argument("--epochs", type=positive_int, default=30, help="epochs (default: %(default)s)")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="seed for the split and the weights")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train a model on digits, blobs or local MNIST")
    _model_options(train)
    train.add_argument("--dataset", choices=["digits", "blobs", "mnist"], default="digits")
    train.add_argument("--data-dir", help="directory (or .npz) holding the MNIST files, for --dataset mnist")
    train.add_argument("--epochs", type=positive_int, default=20)
    train.add_argument("--batch-size", type=positive_int, default=32)
    train.add_argument("--lr", type=non_negative_float, default=0.05, help="learning rate")
    train.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    train.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    train.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    train.add_argument("--dropout", type=non_negative_float, default=0.0, help="dropout (mlp only)")
    train.add_argument("--save", metavar="PATH.npz", help="write the trained model (safe .npz, no pickle)")
    train.add_argument("--history", metavar="PATH", help="write per-epoch metrics as .csv or .json")
    train.set_defaults(run=_train)

    check = commands.add_parser("check", help="tape vs manual vs finite differences; exit 1 on a mismatch",
                                epilog=MANUAL_SIGNATURE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_options(check)
    check.add_argument("--reg", type=non_negative_float, default=0.0, help="L2: 0.5 * reg * sum(W**2)")
    check.add_argument("--batch", type=positive_int, default=16, help="examples in the batch")
    check.add_argument("--manual", metavar="FILE.py", help="check your own backward() against the tape")
    check.set_defaults(run=_check)

    graph = commands.add_parser("graph", help="draw a built-in model's loss graph (.dot, .svg, .png, .pdf)")
    _model_options(graph)
    graph.add_argument("--out", required=True, help="output file; its suffix picks the format")
    graph.add_argument("--grad", action="store_true", help="run backward and show gradient norms")
    graph.add_argument("--collapse", action="store_true", help="one node per module")
    graph.add_argument("--batch", type=positive_int, default=8, help="examples in the batch")
    graph.set_defaults(run=_graph)

    timing = commands.add_parser("bench", help="time a training step against hand-written NumPy",
                                 description=bench.DESCRIPTION)
    bench.add_arguments(timing).set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 gradients disagree, 2 bad input).

    >>> import tempfile
    >>> main(["graph", "--out", f"{tempfile.mkdtemp()}/g.dot"])  # doctest: +ELLIPSIS
    wrote .../g.dot
    0
    """
    args = make_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        status = args.run(args)
    except (CommandError, OSError, ValueError, FloatingPointError) as err:
        print(f"microtensor {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.command in ("demo", "train"):
        print(f"done in {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
