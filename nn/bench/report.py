"""What a run measured (:class:`Report`), the issue's targets, and the markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nn.bench.steps import IMPLEMENTATIONS, REFERENCE, TARGET
from nn.bench.workloads import TOOLS_WORKLOAD


@dataclass
class Result:
    """One implementation on one workload in one dtype. Times are seconds per step."""

    workload: str
    dtype: str
    implementation: str
    check: str
    agrees: bool | None = None  # None: not compared (the reference itself, the floor)
    steps_per_block: int = 0
    median: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    ratio: float | None = None  # median of per-round ratios to the reference
    ratio_min: float | None = None
    ratio_max: float | None = None
    floor_ratio: float | None = None  # median of per-round ratios to the matmul floor
    # 95% confidence intervals of those two medians (see timing.median_interval)
    ratio_interval: list[float] | None = None  # [low, high]
    floor_interval: list[float] | None = None


@dataclass
class Report:
    """Everything one run measured, in one thread setting; JSON round-trips it."""

    machine: dict[str, str]
    threads: dict[str, Any]
    settings: dict[str, Any]
    workloads: list[str]
    labels: dict[str, str]
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    tools: dict[str, float | str] = field(default_factory=dict)
    load: list[float | None] = field(default_factory=list)  # 1-minute load average at start and end

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(**{**data, "results": [Result(**r) for r in data["results"]]})

    @property
    def ok(self) -> bool:
        """False when some implementation disagreed with the reference."""
        return all(r.agrees is not False for r in self.results)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(result: Result | None) -> str:
    if result is None:
        return "-"
    if result.agrees is False:
        return "wrong"
    return _ratio(result.ratio)


def _columns(report: Report) -> list[str]:
    """Implementations other than the reference, in the registry's order, then any others."""
    present = {r.implementation for r in report.results} - {REFERENCE.name}
    names = [name for name in IMPLEMENTATIONS if name in present]
    return names + sorted(present - set(names))


def _label(name: str) -> str:
    return IMPLEMENTATIONS[name].label if name in IMPLEMENTATIONS else name


def _threads_title(report: Report) -> str:
    requested = report.threads["requested"]
    return "threads as found" if requested is None else f"{requested} thread{'s' * (requested != 1)}"


def ratio_table(report: Report, dtype: str) -> list[str]:
    """Markdown rows: workloads by implementations, median ratios to the NumPy step."""
    columns = _columns(report)
    found = {(r.workload, r.implementation): r for r in report.results if r.dtype == dtype}
    lines = [
        "| workload | NumPy step (ms) | " + " | ".join(_label(c) for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name in report.workloads:
        reference = found.get((name, REFERENCE.name))
        ms = "-" if reference is None or reference.median is None else f"{reference.median * 1e3:.3f}"
        cells = [_cell(found.get((name, c))) for c in columns]
        lines.append(f"| {report.labels[name]} | {ms} | " + " | ".join(cells) + " |")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def detail_table(report: Report, dtype: str) -> list[str]:
    """Markdown rows: every measurement with its spread and its agreement check."""
    lines = [
        "| workload | implementation | median ms | min-max ms | ratio | ratio min-max | "
        "vs floor | steps/block | first step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.results:
        if r.dtype != dtype:
            continue
        spread = "-" if r.minimum is None else f"{_ms(r.minimum)}-{_ms(r.maximum)}"
        ratio_spread = "-" if r.ratio_min is None else f"{r.ratio_min:.2f}-{r.ratio_max:.2f}"
        lines.append(
            f"| {r.workload} | {_label(r.implementation)} | {_ms(r.median)} | {spread} | {_ratio(r.ratio)} | "
            f"{ratio_spread} | {_ratio(r.floor_ratio)} | {r.steps_per_block} | {r.check} |"
        )
    return lines


# The speed targets for the microtensor step: workload -> (most ratio to the NumPy
# step, most ratio to the matmul floor or None).
SPEED_TARGETS = {"W1": (1.5, None), "W2": (1.05, None), "W3": (1.05, None), "W4": (0.95, 1.10)}


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _judged(ratio: float, interval: Sequence[float] | None, most: float) -> tuple[str, str]:
    """(measured, verdict) of a median ratio against its target.

    The verdict follows the median; when the target lies inside the median's confidence
    interval, the run cannot tell the two apart, and the verdict says so.
    """
    if interval is None:
        return _ratio(ratio), _verdict(ratio <= most)
    low, high = interval
    verdict = _verdict(ratio <= most) + (" (within noise)" if low <= most <= high else "")
    return f"{_ratio(ratio)} ({low:.2f}-{high:.2f})", verdict


def speed_targets(report: Report, dtype: str) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for each speed target this report can judge."""
    rows = []
    setting = f"{dtype}, {_threads_title(report)}"
    found = {r.workload: r for r in report.results if r.dtype == dtype and r.implementation == TARGET}
    for workload, (most, most_floor) in SPEED_TARGETS.items():
        result = found.get(workload)
        if result is None or result.ratio is None:
            continue
        rows.append((f"{workload} <= {most}x NumPy", *_judged(result.ratio, result.ratio_interval, most),
                     setting))
        if most_floor is not None and result.floor_ratio is not None:
            rows.append((f"{workload} <= {most_floor}x matmul floor",
                         *_judged(result.floor_ratio, result.floor_interval, most_floor), setting))
    return rows


def _dtypes(report: Report) -> list[str]:
    return list(dict.fromkeys(r.dtype for r in report.results))


def render(reports: Sequence[Report], memory: dict[str, Any] | None = None) -> str:
    """The benchmark as markdown: machine, ratio tables, targets, tools, memory, details."""
    first = reports[0]
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in first.machine.items()]
    lines += ["", f"Rounds per workload: {first.settings['rounds']}, blocks of about "
              f"{first.settings['block_seconds'] * 1e3:.0f} ms per implementation per round. "
              f"Allocator: {first.settings['allocator']}.", ""]
    targets: list[tuple[str, str, str, str]] = []
    for report in reports:
        lines += ["", f"## {_threads_title(report).capitalize()}", "", _describe_threads(report.threads),
                  "", _describe_load(report)] + _contention(report)
        for dtype in _dtypes(report):
            lines += ["", f"### {dtype}, {_threads_title(report)}: step time / NumPy step time", ""]
            lines += ratio_table(report, dtype)
            targets += speed_targets(report, dtype)
        if report.skipped:
            lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in report.skipped.items()) + "."]
    targets += tool_targets(first.tools) + memory_targets(memory or {})
    lines += ["", f"## Targets ({_label(TARGET)})", "", "| target | measured | verdict | setting |",
              "|---|---:|---|---|"]
    lines += [f"| {t} | {m} | {v} | {s} |" for t, m, v, s in targets]
    if memory:
        lines += ["", "## Memory", ""] + memory_lines(memory)
    lines += ["", "## Every measurement", ""]
    for report in reports:
        for dtype in _dtypes(report):
            lines += ["", f"<details><summary>{dtype}, {_threads_title(report)}</summary>", ""]
            lines += detail_table(report, dtype) + ["", "</details>"]
    return "\n".join(lines) + "\n"


def _describe_load(report: Report) -> str:
    start, end = report.load
    if start is None or end is None:
        return "Load average: this platform does not report one."
    return (f"Load average (1 min): {start:.2f} at the start, {end:.2f} at the end, on "
            f"{report.machine.get('cores')} cores; the benchmark adds about one per busy thread, "
            "more means other processes shared the machine.")


def _contention(report: Report) -> list[str]:
    """A warning under tables where PyTorch's threads and NumPy's ran side by side in one process."""
    threads, torch = report.threads.get("requested"), report.threads.get("torch")
    if not threads or threads < 2 or torch is None:
        return []
    return ["", f"With {threads} threads, PyTorch's OpenMP pool and NumPy's OpenBLAS pool take turns "
            "in this one process and spin against each other: the PyTorch columns below include that "
            "contention, and are not PyTorch's speed on its own (time it in a process of its own for "
            "that). The 1-thread tables compare it fairly."]


def _describe_threads(threads: dict[str, Any]) -> str:
    pools = ", ".join(f"{name}: {n}" for name, n in threads.get("pools", {}).items())
    return f"Set by {threads['method']}; in effect: torch {threads['torch']}, {pools}."


# "Stay interactive (well under a second)" for gradcheck, draw_graph and the tape.
TOOLS_SECONDS = 0.5


def tool_targets(tools: dict[str, float | str]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for each interactive tool timed."""
    rows = []
    sizes = "-".join(map(str, TOOLS_WORKLOAD.sizes))
    for name, seconds in tools.items():
        measured = seconds if isinstance(seconds, str) else f"{seconds * 1e3:.1f} ms"
        met = not isinstance(seconds, str) and seconds < TOOLS_SECONDS
        rows.append((f"`mt.{name}` of a {sizes} net < {TOOLS_SECONDS} s", measured, _verdict(met),
                     f"float64, batch {TOOLS_WORKLOAD.batch}"))
    return rows


# Memory targets: W4 peak RSS at most this times the NumPy run's; growth over the W1 run
# under this many bytes per step (one leaked small object per step would exceed it).
PEAK_RSS_TARGET = 1.2
GROWTH_BYTES_PER_STEP = 10


def memory_targets(memory: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, setting) for the memory measurements present."""
    rows = []
    peaks = memory.get("peak", {})
    if REFERENCE.name in peaks and TARGET in peaks:
        ratio = peaks[TARGET]["peak_kib"] / peaks[REFERENCE.name]["peak_kib"]
        rows.append((f"W4 peak RSS <= {PEAK_RSS_TARGET}x NumPy", _ratio(ratio),
                     _verdict(ratio <= PEAK_RSS_TARGET), memory.get("peak_setting", "")))
    growth = memory.get("growth")
    if growth:
        limit = GROWTH_BYTES_PER_STEP * growth["steps"]
        held = growth["traced_growth_bytes"]
        rows.append((f"W1 no growth over {growth['steps']:,} steps (< {limit:,} B)", f"{held:,} B",
                     _verdict(held < limit), "float64"))
        cycles = growth["cyclic_objects_per_step"]
        rows.append(("W1 no reference cycles", f"{cycles:g} objects/step", _verdict(cycles == 0), "float64"))
    return rows


def memory_lines(memory: dict[str, Any]) -> list[str]:
    """Markdown for the peak RSS and growth measurements."""
    lines = []
    peaks = memory.get("peak", {})
    if peaks:
        setting = memory.get("peak_setting", "")
        lines += [f"Peak RSS of a W4 training run ({setting}), each in its own process:",
                  "", "| implementation | held after setup (MiB) | peak (MiB) | training added (MiB) |",
                  "|---|---:|---:|---:|"]
        for name, peak in peaks.items():
            added = peak["peak_kib"] - peak["setup_kib"]
            lines.append(f"| {_label(name)} | {peak['setup_kib'] / 1024:.1f} | {peak['peak_kib'] / 1024:.1f} "
                         f"| {added / 1024:.1f} |")
    growth = memory.get("growth")
    if growth:
        lines += ["", f"{_label(growth['implementation'])}, W1, {growth['steps']:,} steps after a warm-up: "
                  f"{growth['traced_growth_bytes']:,} bytes still allocated (tracemalloc), RSS changed by "
                  f"{growth['rss_growth_kib']:,} KiB; {growth['cyclic_objects_per_step']:g} objects per step "
                  "left for the cycle collector."]
    return lines
