"""The picture: a Graphviz drawing of the ops an output depends on.

Each recorded op is a box numbered in tape order (``#3`` is ``v3`` in ``print(mt.tape(out))``),
each leaf tensor and each constant mixed into an op is a node of its own, and edges run in
the direction data flows, one per argument. Node ids come from tape order, never from
object ids, so the DOT source of a model is the same in every run and can be compared
with a saved file.

>>> x = Tensor([1.0, 2.0], requires_grad=True, name="x")
>>> [line.strip() for line in to_dot((x + x).sum()).splitlines() if "->" in line]
['leaf0 -> op0', 'leaf0 -> op0', 'op0 -> op1']
"""

from __future__ import annotations

import html
import os
import textwrap
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz
import numpy as np

from microtensor.autograd import describe_constant, describe_params, expect_tensor, recorded_nodes
from microtensor.tensor import Tensor

# Ops whose arguments can be swapped; the edges into every other op with two or more
# arguments are labelled with the argument's position (0 for `a` in `a - b`).
SYMMETRIC_OPS = frozenset({"add", "mul"})

STYLES: dict[str, dict[str, str]] = {
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#eeeeee"},
    "output": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c8e6c9", "penwidth": "2"},
    "parameter": {"shape": "box", "style": "filled", "fillcolor": "#bbdefb"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "#fff9c4"},
    "constant": {"shape": "plaintext", "width": "0", "height": "0", "margin": "0.03",
                 "fontsize": "9", "fontcolor": "#616161"},
    "module": {"shape": "box3d", "style": "filled", "fillcolor": "#e1bee7", "margin": "0.15,0.08"},
}
# A mismatching gradient in red; in orange when a mismatch downstream may be its cause.
ALARM = {"style": "filled", "fillcolor": "#ef9a9a", "color": "#b71c1c", "penwidth": "3"}
INHERITED = {"style": "filled", "fillcolor": "#ffe0b2", "color": "#e65100", "penwidth": "2"}
CLUSTER = {"style": "rounded,dashed", "color": "#9e9e9e", "fontcolor": "#424242"}
# An argument's position is written at the arrowhead, by the op it belongs to (a mid-edge
# label lands on cluster titles).
ARGUMENT = {"labeldistance": "2", "labelangle": "30", "labelfontcolor": "#1a237e"}
RENDERED_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
MODULE_OPS_LISTED = 4
DIAGNOSIS_WIDTH = 40  # characters per line of a diagnosis in a label

INSTALL_HINT = (
    "Install Graphviz: `sudo apt install graphviz` (Debian/Ubuntu), `brew install graphviz` "
    "(macOS) or `conda install -c conda-forge graphviz`. Writing a .dot file needs no Graphviz "
    "program: render_graph(output, 'graph.dot'), then `dot -Tsvg graph.dot -o graph.svg` "
    "where Graphviz is installed."
)


@dataclass(eq=False)
class _Node:
    """One drawn node: an op, a leaf tensor, a constant, or a collapsed module."""

    id: str
    kind: str
    lines: list[str]  # HTML-label lines, already escaped
    scope: tuple[str, ...] = ()
    op: str = ""  # an op node's op name and output shape line, kept for module summaries
    shape: str = ""
    verdict: str = ""  # the checking report's diagnosis of a mismatching gradient, escaped
    inherited: bool = False  # another mismatching tensor lies downstream of this one
    members: list[_Node] = field(default_factory=list)  # the ops a module node stands for


@dataclass(frozen=True)
class _Edge:
    source: _Node
    target: _Node
    label: str = ""


def _text(value: Any) -> str:
    """User text made safe for an HTML-like label: markup escaped, unprintables shown.

    Graphviz still expands ``\\N``, ``\\G``, ... inside HTML-like labels, so backslashes are doubled.
    """
    shown = str(value)
    if not shown.replace("\n", "").isprintable():
        shown = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in shown)
    return html.escape(shown.replace("\\", "\\\\"), quote=True).replace("\n", "<br/>")


def _shape_line(shape: tuple[int, ...], dtype: np.dtype, default_dtype: np.dtype | None) -> str:
    """The shape, and the dtype unless it is ``default_dtype`` (None: always show it)."""
    shown = default_dtype is None or dtype != default_dtype
    return _text(f"{shape} {dtype}" if shown else str(shape))


def _wrapped(text: str) -> list[str]:
    """Long diagnoses as lines of a readable width; the writer's own line breaks are kept."""
    return [part for line in text.split("\n") for part in
            textwrap.wrap(line, DIAGNOSIS_WIDTH, expand_tabs=False, replace_whitespace=False) or [""]]


def _grad_line(grad: Any) -> str:
    if grad is None:
        return "<i>grad: none</i>"
    norm = float(np.linalg.norm(np.asarray(grad.data if isinstance(grad, Tensor) else grad)))
    return f"|grad| = {norm:.4g}"


def _parameter_names(params: Any) -> dict[int, str]:
    """Tensor identity -> name, from a mapping or from (name, Tensor) pairs."""
    if params is None:
        return {}
    pairs = params.items() if isinstance(params, Mapping) else params
    names: dict[int, str] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Tensor)):
            raise TypeError(
                f"draw_graph: params must be a mapping or (name, Tensor) pairs such as "
                f"model.named_parameters(); got an entry {type(pair).__name__} {pair!r:.80}"
            )
        names.setdefault(id(pair[1]), str(pair[0]))
    return names


def _report_rows(report: Any) -> dict[str, Any]:
    """A ``GradReport``'s rows by name (any object with ``rows`` of ``name``, ``ok``, ``diagnosis``)."""
    if report is None:
        return {}
    return {str(row.name): row for row in report.rows}


class _Picture:
    """The nodes and edges of one drawing, collected in a single walk over the tape."""

    def __init__(self, output: Tensor, names: dict[int, str], show_grad: bool,
                 report: Any) -> None:
        self.names = names
        self.show_grad = show_grad
        self.rows = _report_rows(report)
        self.default_dtype = output.dtype
        self.nodes: list[_Node] = []
        self.edges: list[_Edge] = []
        self.drawn: dict[int, _Node] = {}  # id(tensor) -> its node, for tensors used again
        self.counts = {"leaf": 0, "const": 0}
        self.names_drawn: set[str] = set()
        ops = list(reversed(recorded_nodes([output])))
        for number, t in enumerate(ops):
            self._add_op(number, t, is_output=t is output)
        if not ops:
            self._source(output)

    def _add_op(self, number: int, t: Tensor, is_output: bool) -> None:
        node = t._node
        name = self.names.get(id(t)) or t.name
        op = _text(node.op.name)
        lines = [f"<b>{_text(name)}</b>", f"#{number} {op}"] if name else [f"#{number} <b>{op}</b>"]
        settings = describe_params(node.params)
        if settings:
            lines.append(_text(settings))
        # The output's dtype is always shown: it is the default every other node is compared to.
        lines.append(_shape_line(t.shape, t.dtype, None if is_output else self.default_dtype))
        drawn = _Node(f"op{number}", "output" if is_output else "op", lines, node.scope,
                      op=node.op.name, shape=lines[-1])
        self._annotate(drawn, t, name, gradient_expected=t._retains_grad)
        labelled = len(node.inputs) > 1 and node.op.name not in SYMMETRIC_OPS
        for position, arg in enumerate(node.inputs):
            self.edges.append(_Edge(self._source(arg), drawn, str(position) if labelled else ""))
        self.drawn[id(t)] = drawn
        self.nodes.append(drawn)

    def _source(self, value: Any) -> _Node:
        """The node an argument comes from: an op drawn earlier, a leaf, or a new constant."""
        if isinstance(value, Tensor):
            if id(value) not in self.drawn:
                self.drawn[id(value)] = self._leaf(value)
            return self.drawn[id(value)]
        label = describe_constant(value)
        if isinstance(value, np.ndarray) and value.dtype != self.default_dtype:
            label += f" {value.dtype}"
        return self._new("const", "constant", [_text(label)])

    def _leaf(self, t: Tensor) -> _Node:
        kind = "parameter" if t.requires_grad else "input"
        name = self.names.get(id(t)) or t.name
        heading = f"<b>{_text(name)}</b>" if name else f"<i>{kind}</i>"
        node = self._new("leaf", kind, [heading, _shape_line(t.shape, t.dtype, self.default_dtype)])
        self._annotate(node, t, name, gradient_expected=t.requires_grad)
        return node

    def _new(self, prefix: str, kind: str, lines: list[str]) -> _Node:
        node = _Node(f"{prefix}{self.counts[prefix]}", kind, lines)
        self.counts[prefix] += 1
        self.nodes.append(node)
        return node

    def _annotate(self, node: _Node, t: Tensor, name: str | None, gradient_expected: bool) -> None:
        """Add the gradient norm and the checking report's verdict on this tensor."""
        if self.show_grad and (gradient_expected or t.grad is not None):
            node.lines.append(_grad_line(t.grad))
        if not name:
            return
        self.names_drawn.add(str(name))
        row = self.rows.get(str(name))
        if row is None:
            return
        if row.ok:
            node.lines.append('<font color="#1b5e20">gradient matches</font>')
            return
        node.verdict = "<br/>".join(_text(line) for line in _wrapped(str(row.diagnosis or "mismatch")))

    def mark_inherited(self) -> None:
        """Flag mismatches with another mismatch downstream: the error may only flow from there.

        Edges are listed in tape order of their targets, so walking them backwards settles
        everything downstream of a node before the edges into it.
        """
        tainted: set[_Node] = set()
        for edge in reversed(self.edges):
            if edge.target.verdict or edge.target in tainted:
                tainted.add(edge.source)
        for node in tainted:
            node.inherited = bool(node.verdict)


def _collapse(nodes: list[_Node], edges: list[_Edge], depth: bool | int) -> tuple[list[_Node], list[_Edge]]:
    """One node per module scope, standing for the ops whose scope cut to ``depth`` names (the
    whole scope when ``depth`` is True) is that scope, the constants they use and the
    parameters only they use; ops outside every module stay as they are."""
    merged_into = _modules_of_ops(nodes, depth)
    users: dict[_Node, set[_Node]] = {}
    for edge in edges:
        users.setdefault(edge.source, set()).add(merged_into.get(edge.target, edge.target))
    for node in nodes:
        used_by = users.get(node, set())
        if node.kind in ("constant", "parameter") and len(used_by) == 1:
            module = next(iter(used_by))
            if module.kind == "module":
                merged_into[node] = module
                module.members.append(node)
    kept = [merged_into.get(node, node) for node in nodes
            if node not in merged_into or merged_into[node].members[0] is node]
    for node in kept:
        if node.kind == "module":
            node.lines = _module_label(node)
    joined: dict[tuple[str, str, str], _Edge] = {}
    kept_edges = []
    for edge in edges:
        source = merged_into.get(edge.source, edge.source)
        target = merged_into.get(edge.target, edge.target)
        if source is target:  # edges inside one module are the module's business
            continue
        if (source, target) == (edge.source, edge.target):  # outside every module: drawn as it is (a + a)
            kept_edges.append(edge)
            continue
        label = edge.label if target is edge.target else ""
        key = (source.id, target.id, label)
        if key not in joined:  # the many edges into or out of one module are one
            joined[key] = _Edge(source, target, label)
            kept_edges.append(joined[key])
    return kept, kept_edges


def _modules_of_ops(nodes: list[_Node], depth: bool | int) -> dict[_Node, _Node]:
    """Each op that ran in a module -> the (new) node of its module, cut to ``depth``.

    A node stands for a run of ops, consecutive in tape order, with the same cut scope. Edges
    then only go from earlier runs to later ones, so the picture has no cycle: a module used
    again after other ops (``lin(lin(x).tanh())``), or a module's own ops before and after a
    child's, are drawn as one node per run.
    """
    merged_into: dict[_Node, _Node] = {}
    run: _Node | None = None
    count = 0
    for node in nodes:
        if node.kind not in ("op", "output"):
            continue
        key = (node.scope if depth is True else node.scope[:depth]) if node.scope else None
        if key is None:
            run = None
            continue
        if run is None or run.scope != key:
            run = _Node(f"module{count}", "module", [], key)
            count += 1
        run.members.append(node)
        merged_into[node] = run
    return merged_into


def _module_label(module: _Node) -> list[str]:
    """The module's name, its ops, its output's shape, and one line per parameter it holds."""
    ops = [member for member in module.members if member.op]
    names = list(dict.fromkeys(op.op for op in ops))
    listed = ", ".join(names[:MODULE_OPS_LISTED]) + (", ..." if len(names) > MODULE_OPS_LISTED else "")
    count = len(ops)
    lines = [f"<b>{_text(module.scope[-1])}</b>", _text(f"{count} op{'s' * (count != 1)}: {listed}"),
             ops[-1].shape]
    return lines + [" ".join(member.lines) for member in module.members if member.kind == "parameter"]


def _placements(nodes: list[_Node], edges: list[_Edge]) -> dict[_Node, tuple[str, ...]]:
    """The module cluster each node is drawn in.

    Ops go in their scope, a collapsed module beside its siblings, a parameter in the
    innermost scope shared by all the ops that use it (``fc1`` for ``fc1.weight``), a
    constant with the op that uses it; inputs stay outside every module.
    """
    place = {node: node.scope[:-1] if node.kind == "module" else node.scope for node in nodes}
    users: dict[_Node, list[tuple[str, ...]]] = {}
    for edge in edges:
        if edge.source.kind in ("parameter", "constant"):
            users.setdefault(edge.source, []).append(place[edge.target])
    for source, scopes in users.items():
        place[source] = os.path.commonprefix(scopes)  # works on any sequences, here name tuples
    return place


def _attributes(values: dict[str, str]) -> str:
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def _node_statement(node: _Node, indent: str) -> str:
    flagged = [n for n in (node, *node.members) if n.verdict]
    lines = node.lines + [_verdict_line(n, named=n is not node) for n in flagged]
    style = STYLES[node.kind]
    if flagged:
        style = style | (INHERITED if all(n.inherited for n in flagged) else ALARM)
    return f"{indent}{node.id} [label=<{'<br/>'.join(lines)}> {_attributes(style)}]"


def _verdict_line(node: _Node, named: bool) -> str:
    """The diagnosis, in red or orange; ``named``: led by the tensor's name (inside a module)."""
    colour = (INHERITED if node.inherited else ALARM)["color"]
    return f'<font color="{colour}">{node.lines[0] + ": " if named else ""}<b>{node.verdict}</b></font>'


def _body(nodes: list[_Node], edges: list[_Edge]) -> list[str]:
    """DOT statements: nodes nested in one cluster per module scope, then the edges."""
    place = _placements(nodes, edges)
    members: dict[tuple[str, ...], list[_Node]] = {}
    children: dict[tuple[str, ...], dict[tuple[str, ...], None]] = {}  # ordered sets
    for node in nodes:
        scope = place[node]
        members.setdefault(scope, []).append(node)
        for depth in range(len(scope), 0, -1):  # register the scope and any new ancestors
            siblings = children.setdefault(scope[:depth - 1], {})
            if scope[:depth] in siblings:
                break
            siblings[scope[:depth]] = None
    lines = [_node_statement(node, "\t") for node in members.get((), [])]
    stack = [iter(children.get((), []))]
    clusters = 0
    while stack:  # pre-order over the scope tree, without recursion
        scope = next(stack[-1], None)
        if scope is None:
            stack.pop()
            if stack:
                lines.append("\t" * len(stack) + "}")
            continue
        indent = "\t" * len(stack)
        lines.append(f"{indent}subgraph cluster{clusters} {{")
        lines.append(f"{indent}\tgraph [label=<{_text(scope[-1])}> {_attributes(CLUSTER)}]")
        lines += [_node_statement(node, indent + "\t") for node in members.get(scope, [])]
        clusters += 1
        stack.append(iter(children.get(scope, [])))
    for edge in edges:
        label = f' [headlabel="{edge.label}" {_attributes(ARGUMENT)}]' if edge.label else ""
        lines.append(f"\t{edge.source.id} -> {edge.target.id}{label}")
    return [line + "\n" for line in lines]


def _check_options(output: Any, rankdir: str, collapse: Any) -> None:
    expect_tensor(output, "draw_graph")
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise ValueError(f"draw_graph: rankdir must be one of 'LR', 'RL', 'TB', 'BT', got {rankdir!r}")
    if not (isinstance(collapse, bool) or (isinstance(collapse, int) and collapse >= 1)):
        raise ValueError(
            f"draw_graph: collapse must be False, True (one node per innermost module) or a "
            f"module depth >= 1, got {collapse!r}"
        )


def _check_report_names(rows: dict[str, Any], drawn: set[str]) -> None:
    missing = [name for name, row in rows.items() if not row.ok and name not in drawn]
    if missing:
        raise ValueError(
            f"draw_graph: the report's mismatching rows {missing} name no tensor in this graph; "
            f"name the tensors (Tensor(..., name=...) or .named(...)) or pass "
            f"params=model.named_parameters()"
        )


def draw_graph(
    output: Tensor,
    params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None = None,
    show_grad: bool = False,
    rankdir: str = "LR",
    report: Any = None,
    collapse: bool | int = False,
) -> graphviz.Digraph:
    """The graph ``output`` was computed by, as a ``graphviz.Digraph`` (shown inline in Jupyter).

    One box per recorded op, numbered in tape order, and one node per leaf tensor and per
    constant, with an edge per argument in the direction data flows; edges into ops whose
    arguments cannot be swapped (``sub``, ``div``, ``pow``, ``matmul``, ...) carry the
    argument's position. Labels show the op, its output shape and, where it differs from
    the output's, the dtype. Leaves are named by ``params`` (a mapping or (name, Tensor)
    pairs, e.g. ``model.named_parameters()``) or else by ``Tensor.name``; parameters
    (leaves that require grad) are blue, inputs yellow, constants plain text, the output
    green. Ops that ran inside ``mt.scope`` (every ``nn`` module) are grouped in one
    labelled cluster per module.

    ``show_grad``: add each gradient's norm (after backward). ``report``: a ``GradReport``
    (e.g. from ``mt.check_manual``); tensors whose rows mismatch carry the diagnosis and are
    red, or orange when a mismatching tensor downstream may be the cause. ``collapse``: one
    node per module (True: per innermost module; an int: per module that many names deep).

    >>> W = Tensor([[1.0, 2.0]], requires_grad=True, name="W")
    >>> graph = draw_graph((W @ W.T).sum())
    >>> type(graph).__name__, graph.source.count("->")
    ('Digraph', 4)
    """
    _check_options(output, rankdir, collapse)
    picture = _Picture(output, _parameter_names(params), show_grad, report)
    _check_report_names(picture.rows, picture.names_drawn)
    picture.mark_inherited()
    nodes, edges = picture.nodes, picture.edges
    if collapse:
        nodes, edges = _collapse(nodes, edges, collapse)
    return graphviz.Digraph(
        "microtensor",
        graph_attr={"rankdir": rankdir, "fontname": "Helvetica"},
        node_attr={"fontname": "Helvetica", "fontsize": "11"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#616161"},
        body=_body(nodes, edges),
    )


def to_dot(output: Tensor, **options: Any) -> str:
    """The DOT source of :func:`draw_graph`'s picture; needs no Graphviz program.

    ``options`` are :func:`draw_graph`'s (``params``, ``show_grad``, ``rankdir``, ``report``,
    ``collapse``). The same graph gives the same text in every run, so it can be kept in a
    file and compared.

    >>> x = Tensor([3.0], requires_grad=True, name="x")
    >>> y = x * 2
    >>> to_dot(y) == to_dot(y)
    True
    >>> for line in to_dot(y).splitlines()[4:]:
    ...     print(line.strip().split(" shape=")[0])  # without the styling
    leaf0 [label=<<b>x</b><br/>(1,)>
    const0 [label=<2>
    op0 [label=<#0 <b>mul</b><br/>(1,) float64>
    leaf0 -> op0
    const0 -> op0
    }
    """
    return draw_graph(output, **options).source


def render_graph(output: Tensor, path: str | os.PathLike[str], **options: Any) -> Path:
    """Write the picture of ``output`` to ``path``: ``.dot`` source, or ``.svg``/``.png``/``.pdf``.

    ``options`` are :func:`draw_graph`'s. A ``.dot`` file needs nothing else; the pictures
    run Graphviz's ``dot`` program, and without it the error says how to install it. The
    file is replaced in one step, so a failure never leaves a half-written picture.

    >>> import tempfile, pathlib
    >>> x = Tensor([1.0], requires_grad=True, name="x")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     written = render_graph(x.exp(), pathlib.Path(folder) / "exp.dot")
    ...     written.read_text().startswith("digraph")
    True
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".dot" and suffix not in RENDERED_FORMATS:
        raise ValueError(
            f"render_graph: cannot tell the format of {str(path)!r}; the file name must end "
            f"in .dot, .svg, .png or .pdf"
        )
    graph = draw_graph(output, **options)
    content = graph.source.encode() if suffix == ".dot" else _run_dot(graph, RENDERED_FORMATS[suffix])
    # Through a symbolic link, the file it names is replaced and the link stays, as nn.save does.
    _write_atomically(Path(os.path.realpath(path)) if path.is_symlink() else path, content)
    return path


def _run_dot(graph: graphviz.Digraph, fmt: str) -> bytes:
    try:
        return graph.pipe(format=fmt, quiet=True)  # dot's complaint goes into our error, not stderr
    except graphviz.ExecutableNotFound:
        raise RuntimeError(
            f"render_graph: writing .{fmt} needs Graphviz's `dot` program, which is not on PATH. "
            + INSTALL_HINT
        ) from None
    except graphviz.CalledProcessError as err:
        stderr = (err.stderr or b"").decode(errors="replace").strip()
        raise RuntimeError(f"render_graph: Graphviz's dot failed to write .{fmt}: {stderr}") from None


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(content)
        os.replace(temporary, path)
    except OSError as err:  # named by the path asked for, not the temporary file's
        raise OSError(err.errno, f"render_graph: cannot write {str(path)!r}: {err.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
