"""The `microtensor` command, end to end through the installed console script, running this
tree's packages (PYTHONPATH), whichever copy the script was installed from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nn

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_BACKWARD = ROOT / "docs" / "examples" / "two_layer_backward.py"
COMMAND = shutil.which("microtensor") or pytest.skip("the microtensor script is not installed",
                                                    allow_module_level=True)


THIS_TREE = {"PYTHONPATH": str(ROOT)}


def run(*args, cwd=None):
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, **THIS_TREE})


def test_the_script_runs_this_trees_packages():
    result = subprocess.run([COMMAND, "--help"], capture_output=True, text=True,
                            env={**os.environ, **THIS_TREE, "PYTHONVERBOSE": "1"}, timeout=120)
    # Python's verbose imports name the source each module came from (through its .pyc or not).
    imported = [line for line in result.stderr.splitlines() if "/nn/cli.py" in line]
    assert imported and all(str(ROOT / "nn" / "cli.py") in line for line in imported), imported


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "train", "check", "graph", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["demo", "train", "check", "graph", "bench"])
def test_each_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and f"usage: microtensor {command}" in result.stdout


def test_demo_trains_checks_draws_and_lists_the_files_it_wrote(tmp_path):
    result = run("demo", "--out", tmp_path / "out", "--epochs", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "softmax_cross_entropy(" in out and "fc1.weight" in out  # the tape listing
    assert "epoch 5/5" in out and "test " in out
    assert "nn.manual.check: all 4 parameters agree" in out
    graph = tmp_path / "out" / ("loss_graph.svg" if shutil.which("dot") else "loss_graph.dot")
    for path in (graph, tmp_path / "out" / "model.npz", tmp_path / "out" / "history.csv"):
        assert path.stat().st_size > 0 and f"wrote {path}" in out
    restored = nn.load(nn.TwoLayerNet(64, 64, 10), tmp_path / "out" / "model.npz")
    assert restored.fc1.weight.shape == (64, 64)


def test_train_saves_a_checkpoint_and_a_json_history(tmp_path):
    result = run("train", "--model", "three-layer", "--hidden", "32", "16", "--epochs", "3",
                 "--optimizer", "adam", "--lr", "0.01", "--save", tmp_path / "m.npz",
                 "--history", tmp_path / "h.json")
    assert result.returncode == 0, result.stderr
    history = json.loads((tmp_path / "h.json").read_text())
    assert history["epoch"] == [1, 2, 3] and len(history["val_accuracy"]) == 3
    nn.load(nn.ThreeLayerNet(64, 32, 16, 10), tmp_path / "m.npz")


def test_train_with_hidden_sizes_alone_trains_an_mlp_and_writes_a_csv_history(tmp_path):
    result = run("train", "--hidden", "16", "16", "--dropout", "0.1",
                 "--dataset", "blobs", "--epochs", "2", "--history", tmp_path / "h.csv")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert result.stdout.startswith("MLP(2, 16, 16, 2) on blobs")
    assert rows[0].startswith("epoch,loss,accuracy") and len(rows) == 3


def test_check_of_a_built_in_model_passes_with_exit_status_0():
    result = run("check", "--model", "three-layer", "--reg", "0.01")
    assert result.returncode == 0, result.stdout
    assert "all 6 parameters agree" in result.stdout


def test_check_manual_accepts_a_correct_hand_written_backward():
    result = run("check", "--manual", EXAMPLE_BACKWARD, "--reg", "0.01")
    assert result.returncode == 0, result.stdout
    assert "all 7 gradients match" in result.stdout


def test_check_manual_names_the_wrong_step_and_exits_1(tmp_path):
    buggy = tmp_path / "buggy.py"
    buggy.write_text(EXAMPLE_BACKWARD.read_text().replace("dz1 = dh1 * (z1 > 0)", "dz1 = dh1"))
    result = run("check", "--manual", buggy)
    assert result.returncode == 1
    assert "first wrong: z1" in result.stdout and "unmasked" in result.stdout


@pytest.mark.parametrize("suffix", [".dot", ".svg", ".png"])
def test_graph_writes_the_picture_of_a_built_in_model(tmp_path, suffix):
    if suffix != ".dot" and not shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed")
    path = tmp_path / f"g{suffix}"
    result = run("graph", "--model", "mlp", "--out", path, "--grad")
    assert result.returncode == 0, result.stderr
    picture = path.read_bytes()
    if suffix == ".png":
        assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 1000
    else:
        assert "0.weight" in picture.decode()


@pytest.mark.parametrize("args, fragments", [
    (["train", "--epochs", "zero"], ["--epochs", "must be a positive integer"]),
    (["train", "--lr", "inf"], ["--lr", "finite number"]),
    (["train", "--save", "/no/such/dir/m.npz"], ["--save", "does not exist"]),
    (["train", "--dropout", "0.5"], ["--dropout needs an mlp"]),
    (["bench", "--threads", "0"], ["--threads", "positive integer"]),
    (["train", "--lr", "-1"], ["--lr", ">= 0"]),
    (["train", "--model", "deep"], ["--model", "invalid choice"]),
    (["train", "--model", "two-layer", "--hidden", "8", "8"], ["two-layer takes 1 hidden"]),
    (["train", "--dataset", "mnist"], ["--data-dir"]),
    (["train", "--dataset", "mnist", "--data-dir", "/no/such/dir"], ["train-images-idx3-ubyte"]),
    (["train", "--history", "h.txt"], [".csv or .json"]),
    (["check", "--manual", "/no/such/file.py"], ["no such file"]),
    (["graph", "--out", "g.gif"], ["g.gif"]),
    (["graph"], ["--out"]),
    (["frobnicate"], ["invalid choice"]),
    (["train", "--seed", "-1"], ["argument --seed: must be a non-negative integer, got -1"]),
    (["demo", "--seed", "-1"], ["argument --seed: must be a non-negative integer, got -1"]),
    (["check", "--seed", "-2"], ["argument --seed: must be a non-negative integer, got -2"]),
    (["graph", "--out", "g.dot", "--seed", "-1"], ["argument --seed: must be a non-negative integer"]),
    (["check", "--batch", "5000"], ["--batch 5000: the digits' training split holds only 1257 examples"]),
    (["graph", "--out", "g.dot", "--batch", "5000"], ["--batch 5000: the digits' training split holds only"]),
    # the path asked for, not the temporary file the picture is first written to
    (["graph", "--out", "nodir/g.dot"], ["--out: cannot write nodir/g.dot: the directory nodir does not"]),
])
def test_bad_arguments_and_missing_files_give_one_line_and_exit_status_2(args, fragments, tmp_path):
    assert_one_line_error(run(*args, cwd=tmp_path), *fragments)


def test_a_manual_file_without_backward_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.py").write_text("x = 1\n")
    assert_one_line_error(run("check", "--manual", tmp_path / "empty.py"), "defines no backward")


def test_the_module_runs_as_a_script_too():
    result = subprocess.run([sys.executable, "-m", "nn.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "microtensor" in result.stdout


def test_bench_checks_and_times_a_workload_and_prints_the_table():
    result = run("bench", "--workloads", "W1", "--implementations", "microtensor-nn")
    assert result.returncode == 0, result.stderr
    assert "| W1 | microtensor nn+optim |" in result.stdout
    assert "agrees on loss, gradients, weights" in result.stdout


def test_bench_with_an_unknown_workload_is_a_one_line_error():
    assert_one_line_error(run("bench", "--workloads", "W9"), "--workloads", "invalid choice")


def test_graph_without_graphviz_says_how_to_install_it_in_one_line(tmp_path):
    result = subprocess.run([COMMAND, "graph", "--out", tmp_path / "g.svg"], capture_output=True, text=True,
                            env={"PATH": str(tmp_path), **THIS_TREE}, timeout=120)
    assert_one_line_error(result, "needs Graphviz's `dot`", "apt install graphviz", ".dot file")
    assert not (tmp_path / "g.svg").exists()


def test_a_save_path_that_is_a_directory_is_refused_before_training(tmp_path):
    (tmp_path / "d.npz").mkdir()
    result = run("train", "--save", "d.npz", cwd=tmp_path)
    assert_one_line_error(result, "--save: cannot write d.npz: it is a directory")
    assert result.stdout == ""  # no epoch was trained


def test_mnist_labels_that_are_not_classes_are_a_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=np.arange(20) % 10 - 1, x_test=images[:5],
             y_test=np.arange(5))
    result = run("train", "--dataset", "mnist", "--data-dir", tmp_path / "mnist.npz")
    assert_one_line_error(result, "load_mnist: y_train in", "holds values from -1 to 8")


def test_a_diverging_training_run_is_one_line_without_numpy_warnings():
    result = run("train", "--epochs", "1", "--lr", "1e6")
    assert_one_line_error(result, "microtensor train: error: training diverged in epoch 1: the training loss "
                                  "became nan in batch", "try a smaller --lr than 1e+06")
    assert "optimizer's state" not in result.stderr


def test_demo_saves_its_results_and_the_dot_source_when_graphvizs_dot_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dot").write_text("#!/bin/sh\necho 'dot: broken' >&2\nexit 1\n")
    (bin_dir / "dot").chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run([COMMAND, "demo", "--out", out, "--epochs", "1"], capture_output=True, text=True,
                            env={"PATH": str(bin_dir), **THIS_TREE}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Graphviz's dot failed to write .svg: dot: broken; so the graph is DOT source" in result.stdout
    for name in ("loss_graph.dot", "model.npz", "history.csv"):
        assert (out / name).stat().st_size > 0 and f"wrote {out / name}" in result.stdout
