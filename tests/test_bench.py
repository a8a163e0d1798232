"""The benchmark harness in quick mode on tiny sizes: structure and agreement, never speed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import microtensor as mt
from nn import bench
from nn.bench import Implementation, NumpyStep, Report, Result, Workload, make_problem
from nn.bench.report import render
from nn.bench.timing import FirstStep

TWO_LAYER = Workload("two", (3, 5, 4), 7)
THREE_LAYER = Workload("three", (4, 6, 5, 3), 9)
BINARY = Workload("binary", (2, 4, 2), 6)


def quick(workloads, implementations=None, dtypes=("float64",)):
    return bench.run(workloads, dtypes, implementations=implementations, rounds=2, block_seconds=0.0005)


@pytest.fixture(scope="module")
def report():
    return quick([TWO_LAYER, THREE_LAYER, BINARY], dtypes=("float64", "float32"))


class MissingOneOverN(NumpyStep):
    """The classic bug: dscores = probs - onehot, without dividing by the batch size."""

    def step(self):
        loss = super().step()
        n = self.X.shape[0]
        for p, g in zip(self.params, self.grads):
            p -= self.lr * (n - 1) * g  # finish the update as if the gradient were n times larger
        self.grads = [n * g for g in self.grads]
        return loss


class AscendingUpdate(NumpyStep):
    """Right gradients, wrong sign in the update: W += lr * dW."""

    def step(self):
        loss = super().step()
        for p, g in zip(self.params, self.grads):
            p += 2 * self.lr * g
        return loss


class LeaksACycle(NumpyStep):
    """Leaves one reference cycle behind per step."""

    def step(self):
        node: dict = {}
        node["self"] = node
        return super().step()


def test_every_workload_dtype_and_implementation_has_a_result(report):
    implementations = [impl.name for impl in bench.resolve(None)[0]]
    found = {(r.workload, r.dtype, r.implementation) for r in report.results}
    expected = {(w, d, i) for w in ("two", "three", "binary") for d in ("float64", "float32")
                for i in implementations}
    assert found == expected


def test_every_training_step_agrees_with_the_numpy_reference_before_timing(report):
    compared = [r for r in report.results if r.implementation not in ("numpy", "floor")]
    assert compared and all(r.agrees for r in compared), [r.check for r in compared if not r.agrees]
    assert report.ok


def test_tensor_implementations_are_compared_on_loss_gradients_and_updated_weights(report):
    checks = {r.check for r in report.results if r.implementation in ("microtensor", "microtensor-nn")}
    assert checks == {"agrees on loss, gradients, weights"}


@pytest.mark.skipif(not bench.resolve(["sklearn"])[0][1:], reason="scikit-learn is not installed")
def test_sklearn_with_two_classes_is_compared_on_the_loss_only(report):
    checks = {r.workload: r.check for r in report.results if r.implementation == "sklearn"}
    assert checks["binary"] == "agrees on loss"
    assert checks["two"] == "agrees on loss, weights"


def test_every_timed_result_has_a_median_inside_its_range_and_a_ratio_to_the_reference(report):
    for r in report.results:
        assert r.steps_per_block >= 1
        assert r.minimum <= r.median <= r.maximum
        assert r.ratio_min <= r.ratio <= r.ratio_max
    assert {r.ratio for r in report.results if r.implementation == "numpy"} == {1.0}


def test_the_table_has_a_row_per_workload_and_a_column_per_implementation(report):
    text = bench.render([report])
    columns = len(bench.resolve(None)[0]) - 1  # the reference is the NumPy step (ms) column
    for dtype in ("float64", "float32"):
        title = f"### {dtype}, threads as found: step time / NumPy step time"
        table = text.split(title)[1].strip().split("\n\n")[0].splitlines()
        assert len(table) == 2 + 3
        assert all(line.count("|") == columns + 3 for line in table)
        assert table[2].startswith("| two 3-5-4, batch 7 | ")
    assert "## Machine" in text and "| cpu |" in text


def test_a_gradient_missing_one_over_n_is_caught_and_left_out_of_the_timing():
    wrong = Implementation("missing-1/N", "missing 1/N", MissingOneOverN)
    result = quick([TWO_LAYER], [wrong]).results[-1]
    assert result.agrees is False
    assert result.check.startswith("DISAGREES: gradient of W1: relative error")
    assert result.median is None


def test_a_wrong_sign_in_the_update_is_caught_by_the_weights_after_the_first_step():
    wrong = Implementation("ascending", "ascending", AscendingUpdate)
    result = quick([TWO_LAYER], [wrong]).results[-1]
    assert result.check.startswith("DISAGREES: updated weight of W1")


def test_an_implementation_that_returns_fewer_arrays_than_the_reference_disagrees():
    reference = FirstStep(1.0, [np.ones(2), np.ones(3)], [np.ones(2), np.ones(3)])
    partial = FirstStep(1.0, [np.ones(2)], [np.ones(2)])  # the second bias never compared
    assert bench.disagreement(reference, partial, 1e-9) == "gradients: 1 arrays, expected 2"


def test_a_disagreement_makes_the_report_not_ok_and_shows_wrong_in_the_table():
    report = quick([TWO_LAYER], [Implementation("missing-1/N", "missing 1/N", MissingOneOverN)])
    assert not report.ok
    assert "| wrong |" in bench.render([report])


def test_an_implementation_whose_library_is_missing_is_skipped_with_the_reason():
    absent = Implementation("absent", "absent", NumpyStep, requires="no_such_module_for_bench")
    report = quick([TWO_LAYER], [absent])
    assert "no_such_module_for_bench is not importable" in report.skipped["absent"]
    assert {r.implementation for r in report.results} == {"numpy"}


def test_the_reference_gradients_match_central_differences():
    problem = make_problem(THREE_LAYER)
    reference = NumpyStep(problem)
    reference.step()

    def loss_at(weights):
        return float(NumpyStep(dataclasses.replace(problem, weights=weights)).step())

    for k, (w, g) in enumerate(zip(problem.weights, reference.gradients())):
        numeric = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            shifted = [v.copy() for v in problem.weights]
            shifted[k][idx] += 1e-6
            plus = loss_at(shifted)
            shifted[k][idx] -= 2e-6
            numeric[idx] = (plus - loss_at(shifted)) / 2e-6
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


def test_the_matmul_floor_makes_each_matmul_of_a_step_once():
    problem = make_problem(THREE_LAYER)
    products = [(a @ b).shape for a, b in bench.matmul_operands(problem)]
    n, sizes = THREE_LAYER.batch, THREE_LAYER.sizes
    forward = [(n, s) for s in sizes[1:]]
    weight_grads = list(zip(sizes[:-1], sizes[1:]))
    input_grads = [(n, s) for s in sizes[1:-1]]
    assert products == forward + weight_grads + input_grads


def test_a_report_survives_a_json_round_trip(report):
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def synthetic_report(ratios: dict[str, float], floor_ratio: float) -> Report:
    results = [Result(w, "float64", bench.TARGET, "agrees", True, 1, 1e-3, 1e-3, 1e-3, r, r, r,
                      floor_ratio if w == "W4" else None) for w, r in ratios.items()]
    names = list(ratios)
    return Report({}, {"requested": 1, "method": "test", "torch": None}, {}, names,
                  dict(zip(names, names)), results)


def test_tables_with_pytorch_and_several_threads_warn_that_its_columns_include_contention():
    report = synthetic_report({"W1": 1.4}, floor_ratio=1.0)
    report.machine = {"cores": "2"}
    report.settings = {"rounds": 1, "block_seconds": 0.01, "allocator": "test"}
    report.load = (None, None)
    warning = "the PyTorch columns below include that contention"
    assert warning not in render([report])  # one thread, and no torch
    report.threads = {"requested": 2, "method": "test", "torch": 2}
    assert warning in render([report])


def test_targets_are_marked_met_or_not_met_from_the_measured_ratios():
    report = synthetic_report({"W1": 1.4, "W2": 1.2, "W3": 1.05, "W4": 0.9}, floor_ratio=1.2)
    verdicts = {target: verdict for target, _, verdict, _ in bench.speed_targets(report, "float64")}
    assert verdicts == {
        "W1 <= 1.5x NumPy": "met", "W2 <= 1.05x NumPy": "**not met**", "W3 <= 1.05x NumPy": "met",
        "W4 <= 0.95x NumPy": "met", "W4 <= 1.1x matmul floor": "**not met**",
    }


def test_a_target_inside_the_medians_confidence_interval_is_flagged_as_within_noise():
    report = synthetic_report({"W1": 1.4, "W3": 1.06}, floor_ratio=1.0)
    w1, w3 = report.results
    w1.ratio_interval, w3.ratio_interval = [1.38, 1.45], [1.03, 1.08]
    rows = {target: (measured, verdict)
            for target, measured, verdict, _ in bench.speed_targets(report, "float64")}
    assert rows["W1 <= 1.5x NumPy"] == ("1.40x (1.38-1.45)", "met")
    assert rows["W3 <= 1.05x NumPy"] == ("1.06x (1.03-1.08)", "**not met** (within noise)")


def test_the_median_interval_is_the_order_statistics_a_binomial_test_gives():
    rng = np.random.default_rng(0)
    assert bench.median_interval(range(1, 16)) == (4, 12)  # P(Binomial(15, 1/2) <= 3) = 1.8%
    assert bench.median_interval(range(1, 9)) == (1, 8)  # few rounds: the whole range, 99.2%
    assert bench.median_interval(range(1, 7)) == (1, 6)  # 96.9%
    assert bench.median_interval(range(1, 6)) is None  # the whole range of 5 holds it 93.75% of the time
    # Over many samples of 15 rounds, the interval holds the true median at least 95% of the time.
    held = sum(low <= 0 <= high for low, high in (bench.median_interval(rng.standard_normal(15))
                                                  for _ in range(4000)))
    assert held / 4000 >= 0.95


def test_memory_targets_compare_peak_rss_and_growth_with_their_limits():
    memory = {
        "peak": {"numpy": {"setup_kib": 50, "peak_kib": 100},
                 bench.TARGET: {"setup_kib": 50, "peak_kib": 130}},
        "growth": {"implementation": bench.TARGET, "steps": 100, "traced_growth_bytes": 500,
                   "rss_growth_kib": 0, "cyclic_objects_per_step": 0.0},
    }
    verdicts = [verdict for _, _, verdict, _ in bench.memory_targets(memory)]
    assert verdicts == ["**not met**", "met", "met"]


def test_peak_rss_is_measured_in_a_fresh_process():
    peak = bench.peak_rss_in_fresh_process("numpy", TWO_LAYER, "float64", steps=2)
    assert peak["implementation"] == "numpy"
    assert 0 < peak["setup_kib"] <= peak["peak_kib"]


def test_memory_growth_counts_objects_left_in_reference_cycles():
    growth = bench.memory_growth(Implementation("leaky", "leaky", LeaksACycle), TWO_LAYER, steps=20)
    assert growth["cyclic_objects_per_step"] >= 1
    assert bench.memory_growth("numpy", TWO_LAYER, steps=20)["cyclic_objects_per_step"] == 0


def test_the_tape_of_a_three_layer_loss_is_timed():
    tools = bench.time_tools(repeats=1)
    assert tools["tape"] > 0
    assert tools["gradcheck"] > 0 and tools["draw_graph"] > 0


def test_a_gradcheck_that_finds_wrong_gradients_is_reported_as_failed_not_timed(monkeypatch):
    monkeypatch.setattr(mt, "gradcheck", lambda *args, **kwargs: mt.GradReport([], checks=[
        mt.check.ContractCheck("two backward runs agree", False)]), raising=False)
    tools = bench.time_tools(repeats=1)
    assert tools["gradcheck"].startswith("failed: ValueError: it reports wrong gradients")


def test_a_tool_that_raises_is_reported_as_failed_not_timed(monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("no len()")

    monkeypatch.setattr(mt, "gradcheck", broken, raising=False)
    tools = bench.time_tools(repeats=1)
    assert tools["gradcheck"] == "failed: TypeError: no len()"
    assert [verdict for target, _, verdict, _ in bench.tool_targets(tools) if "gradcheck" in target] == [
        "**not met**"]


def test_main_prints_the_table_and_returns_zero_when_all_agree(capsys, monkeypatch):
    pinned = []  # pinning would last for the rest of this test process: recorded, not done
    monkeypatch.setattr(bench, "pin_allocator", lambda: pinned.append(True))
    code = bench.main(["--workloads", "W1", "--implementations", "microtensor"])
    out = capsys.readouterr().out
    assert code == 0 and pinned == [True]
    assert "| W1 2-32-2, batch 64 | " in out
    assert "## Threads as found" in out
    assert "Allocator: as found." in out


FREE_SIX_TEMPORARIES = """
import resource, sys, numpy as np, nn.bench as b
pinned = b.pin_allocator() if sys.argv[1] == "pin" else b.allocator()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # six 2 MB temporaries freed together, as a hand-written step frees its intermediates
    [np.ones(250_000) for _ in range(6)]
for _ in range(3):
    step()
before = faults()
for _ in range(20):
    step()
print(pinned)
print((faults() - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and glibc: Linux only")
def test_a_pinned_allocator_lets_no_step_fault_freed_memory_back_in():
    def run(mode):
        done = subprocess.run([sys.executable, "-c", FREE_SIX_TEMPORARIES, mode],
                              capture_output=True, text=True, check=True)
        allocator, faults = done.stdout.splitlines()
        return allocator, float(faults)

    allocator, pinned_faults = run("pin")
    assert allocator.startswith("glibc malloc, pinned by the benchmark")
    assert pinned_faults == 0
    assert run("as found") == ("as found", pytest.approx(2900, rel=0.5))  # glibc trims, and pays it back


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_runner(name="run"):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


def test_the_runner_rewrites_only_what_follows_the_hand_written_introduction(tmp_path):
    runner, out = load_runner(), tmp_path / "performance.md"
    runner.write("first table\n", out)
    out.write_text(out.read_text().replace("# Performance", "# Performance, edited by hand"))
    runner.write("second table\n", out)
    text = out.read_text()
    assert text.startswith("# Performance, edited by hand\n")
    assert text.endswith(runner.GENERATED + "\n\nsecond table\n")
    assert "first table" not in text


def test_the_command_and_a_bench_run_work_without_posix_only_modules(monkeypatch):
    # Windows has neither os.getloadavg nor the resource module.
    script = ("import sys; sys.modules['resource'] = None; import os; del os.getloadavg; "
              "import nn.cli, nn.bench; print(nn.bench.system.load_average())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    monkeypatch.delattr("os.getloadavg")
    report = quick([TWO_LAYER], implementations=["microtensor"])
    assert report.load == [None, None]
    assert "Load average: this platform does not report one." in render([report])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_throwaway_tape_of_the_ceiling_benchmark_trains_like_the_numpy_reference(dtype):
    ceiling = load_runner("ceiling")
    problem = make_problem(THREE_LAYER, dtype)
    reference, tape = bench.first_step(NumpyStep(problem)), bench.first_step(ceiling.CeilingTape(problem))
    assert bench.disagreement(reference, tape, bench.TOLERANCE[dtype]) is None


def test_the_ceiling_benchmark_runs_and_prints_its_table():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "ceiling.py"), "--workloads", "W1",
                           "--rounds", "1", "--block", "0.001"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| W1"))
    # microtensor's and the throwaway tape's ratios, to the NumPy step and to the matmuls alone
    assert len(re.findall(r"\| \d+\.\d\dx \(\d+\.\d\dx\)", row)) == 2, row


@pytest.mark.parametrize("variant", list(load_runner("ablate").VARIANTS))
def test_every_stand_in_of_the_ablation_benchmark_trains_like_the_numpy_reference(variant):
    ablate = load_runner("ablate")
    problem = make_problem(THREE_LAYER)
    trainer = ablate.Variant(problem, **ablate.VARIANTS[variant])
    assert bench.disagreement(bench.first_step(NumpyStep(problem)), bench.first_step(trainer),
                              bench.TOLERANCE["float64"]) is None


def test_the_ablation_benchmark_runs_and_prints_a_row_per_variant():
    command = [sys.executable, str(BENCHMARKS / "ablate.py"), "--rounds", "1", "--block", "0.001"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(load_runner("ablate").VARIANTS), done.stdout
