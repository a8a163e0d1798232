"""The picture of a graph: nodes, edges, labels, clusters, highlighting, escaping, rendering."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import microtensor as mt
from microtensor import Tensor

requires_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

NODE = re.compile(r"^\s*((?:op|leaf|const|module)\d+) \[label=<(.*)> (.*)\]$")
EDGE = re.compile(r'^\s*(\w+) -> (\w+)(?: \[headlabel="(\d+)"[^\]]*\])?$')
CLUSTER = re.compile(r"^\s*graph \[label=<(.*?)> ")


def label_text(label: str) -> str:
    """What a label reads as: parsed as XML (so it must be well-formed), line breaks as \\n."""
    return "".join(ET.fromstring(f"<label>{label.replace('<br/>', chr(10))}</label>").itertext())


def nodes_of(source: str) -> dict[str, tuple[str, str]]:
    """node id -> (label text, attributes)."""
    found = {}
    for line in source.splitlines():
        match = NODE.match(line)
        if match:
            assert match[1] not in found, f"node {match[1]} declared twice"
            found[match[1]] = (label_text(match[2]), match[3])
    return found


def edges_of(source: str) -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3] or "") for m in map(EDGE.match, source.splitlines()) if m]


def node_named(source: str, name: str) -> tuple[str, str, str]:
    """(id, label text, attributes) of the one node whose label starts with ``name``."""
    matches = [(i, text, attrs) for i, (text, attrs) in nodes_of(source).items()
               if text.split("\n")[0] == name]
    assert len(matches) == 1, f"{len(matches)} nodes named {name!r}"
    return matches[0]


def small_net(rng):
    X = Tensor(rng.standard_normal((5, 3)), name="X")
    W1 = Tensor(rng.standard_normal((3, 4)), requires_grad=True, name="W1")
    b1 = Tensor(np.zeros(4), requires_grad=True, name="b1")
    W2 = Tensor(rng.standard_normal((4, 2)), requires_grad=True, name="W2")
    y = np.array([0, 1, 1, 0, 1])
    logp = ((X @ W1 + b1).relu() @ W2).log_softmax(axis=-1)
    loss = -logp[np.arange(5), y].mean()
    return loss, {"X": X, "W1": W1, "b1": b1, "W2": W2}


def failing_report(**diagnoses):
    rows = [SimpleNamespace(name=name, ok=not diagnosis, diagnosis=diagnosis)
            for name, diagnosis in diagnoses.items()]
    return SimpleNamespace(rows=rows, ok=all(row.ok for row in rows))


# -- nodes and edges ----------------------------------------------------------------------
def test_one_node_per_recorded_op_and_per_leaf_tensor_and_per_constant(rng):
    loss, leaves = small_net(rng)
    out = loss * 0.5 + 1.0
    nodes = nodes_of(mt.to_dot(out))
    ops = [i for i in nodes if i.startswith("op")]
    assert len(ops) == len(mt.tape(out))
    assert sorted(i for i in nodes if i.startswith("leaf")) == [f"leaf{k}" for k in range(len(leaves))]
    assert sorted(i for i in nodes if i.startswith("const")) == ["const0", "const1"]
    assert len(nodes) == len(ops) + len(leaves) + 2


def test_op_nodes_are_numbered_in_tape_order_like_the_tape_listing(rng):
    loss, _ = small_net(rng)
    nodes = nodes_of(mt.to_dot(loss))
    for entry in mt.tape(loss):
        assert nodes[f"op{entry.position}"][0].startswith(f"#{entry.position} {entry.op}\n")


def test_a_tensor_used_twice_by_one_op_draws_two_edges():
    a = Tensor([1.0, 2.0], requires_grad=True, name="a")
    assert edges_of(mt.to_dot(a + a)) == [("leaf0", "op0", ""), ("leaf0", "op0", "")]


def test_edges_run_in_data_flow_direction_one_per_argument():
    x = Tensor([1.0, 2.0], requires_grad=True, name="x")
    w = Tensor([3.0, 4.0], requires_grad=True, name="w")
    out = (x * w).exp().sum()
    assert edges_of(mt.to_dot(out)) == [
        ("leaf0", "op0", ""), ("leaf1", "op0", ""), ("op0", "op1", ""), ("op1", "op2", ""),
    ]


def test_edges_into_ops_whose_arguments_cannot_be_swapped_carry_the_argument_position():
    a = Tensor([1.0], requires_grad=True, name="a")
    b = Tensor([2.0], requires_grad=True, name="b")
    source = mt.to_dot((b - a) / (2.0 ** a))
    a_id, b_id = node_named(source, "a")[0], node_named(source, "b")[0]
    edges = edges_of(source)
    assert (b_id, "op0", "0") in edges and (a_id, "op0", "1") in edges  # b - a
    assert ("const0", "op1", "0") in edges and (a_id, "op1", "1") in edges  # 2.0 ** a
    assert ("op0", "op2", "0") in edges and ("op1", "op2", "1") in edges  # (b - a) / (2 ** a)


def test_edges_into_add_and_mul_carry_no_position():
    a = Tensor([1.0], requires_grad=True)
    assert {label for _, _, label in edges_of(mt.to_dot(a * 3.0 + a))} == {""}


def test_the_output_is_drawn_once_and_marked():
    a = Tensor([1.0], requires_grad=True)
    out = a.exp()
    nodes = nodes_of(mt.to_dot(out))
    assert 'fillcolor="#c8e6c9"' in nodes["op0"][1]


def test_a_leaf_output_is_drawn_as_a_single_node():
    x = Tensor([1.0, 2.0], requires_grad=True, name="x")
    source = mt.to_dot(x)
    assert list(nodes_of(source)) == ["leaf0"] and edges_of(source) == []


# -- labels ---------------------------------------------------------------------------------
def test_op_labels_show_the_op_its_arguments_and_its_output_shape():
    x = Tensor(np.ones((4, 3)), requires_grad=True)
    text = nodes_of(mt.to_dot(x.log_softmax(axis=0).sum()))["op0"][0]
    assert text == "#0 log_softmax\naxis=0\n(4, 3)"


def test_the_dtype_is_shown_on_the_output_and_wherever_it_differs_from_the_output():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True, name="x")
    logp = x.log_softmax()
    out = logp[np.arange(2), np.array([0, 2])].sum()
    nodes = nodes_of(mt.to_dot(out))
    assert nodes["leaf0"][0] == "x\n(2, 3)"
    assert nodes["op0"][0].endswith("\n(2, 3)")
    assert nodes["op2"][0].endswith("\n() float32")
    assert "index=(array(2,), array(2,))" in nodes["op1"][0]


def test_an_ndarray_constant_shows_its_shape_and_a_differing_dtype():
    x = Tensor(np.ones(3), requires_grad=True)
    nodes = nodes_of(mt.to_dot(x * np.arange(3)))
    assert nodes["const0"][0] == "array(3,) int64"


def test_leaves_are_named_by_tensor_name_and_unnamed_ones_by_their_kind():
    w = Tensor([1.0], requires_grad=True, name="weight")
    c = Tensor([2.0])
    u = Tensor([3.0], requires_grad=True)
    nodes = nodes_of(mt.to_dot(w * c * u))
    assert [nodes[f"leaf{k}"][0] for k in range(3)] == ["weight\n(1,)", "input\n(1,)", "parameter\n(1,)"]


def test_named_intermediates_show_their_name_above_the_op():
    x = Tensor([1.0], requires_grad=True)
    h = x.tanh().named("hidden")
    assert nodes_of(mt.to_dot(h * 2.0))["op0"][0] == "hidden\n#0 tanh\n(1,)"


@pytest.mark.parametrize("as_pairs", [False, True], ids=["mapping", "pairs"])
def test_params_name_leaves_and_win_over_tensor_names(as_pairs):
    W = Tensor(np.ones((2, 2)), requires_grad=True, name="W")
    b = Tensor(np.ones(2), requires_grad=True)
    params = {"fc1.weight": W, "fc1.bias": b}
    source = mt.to_dot((W @ b).sum(), params=list(params.items()) if as_pairs else params)
    node_named(source, "fc1.weight")
    node_named(source, "fc1.bias")
    assert "W\n" not in "".join(text for text, _ in nodes_of(source).values())


def test_params_that_are_not_name_tensor_pairs_are_a_type_error():
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match=r"draw_graph: params .*named_parameters"):
        mt.to_dot(x * 2.0, params=[x])


def test_parameters_inputs_and_constants_are_drawn_distinctly():
    w = Tensor([1.0], requires_grad=True, name="w")
    x = Tensor([2.0], name="x")
    source = mt.to_dot(w * x + 1.0)
    styles = {node_named(source, "w")[2], node_named(source, "x")[2], nodes_of(source)["const0"][1]}
    assert len(styles) == 3


# -- gradients --------------------------------------------------------------------------------
def test_show_grad_after_backward_adds_each_gradient_norm(rng):
    loss, leaves = small_net(rng)
    loss.backward()
    source = mt.to_dot(loss, show_grad=True)
    for name in ("W1", "b1", "W2"):
        text = node_named(source, name)[1]
        shown = float(re.search(r"\|grad\| = (\S+)", text)[1])
        np.testing.assert_allclose(shown, np.linalg.norm(leaves[name].grad), rtol=1e-3)
    assert "grad" not in node_named(source, "X")[1]  # an input has no gradient to show


def test_without_show_grad_no_gradient_is_shown(rng):
    loss, _ = small_net(rng)
    loss.backward()
    assert "grad" not in mt.to_dot(loss)


def test_show_grad_before_backward_says_a_parameter_has_no_gradient():
    w = Tensor([1.0], requires_grad=True, name="w")
    assert node_named(mt.to_dot(w * 2.0, show_grad=True), "w")[1] == "w\n(1,)\ngrad: none"


def test_show_grad_shows_an_intermediate_that_retains_its_gradient():
    x = Tensor([3.0, 4.0], requires_grad=True)
    h = (x * 1.0).retain_grad().named("h")
    (h * 2.0).sum().backward()
    assert node_named(mt.to_dot(h, show_grad=True), "h")[1].endswith("|grad| = 2.828")


# -- determinism ------------------------------------------------------------------------------
def test_the_source_does_not_depend_on_ops_recorded_before(rng):
    def build():
        x = Tensor([1.0, 2.0], requires_grad=True, name="x")
        return mt.to_dot((x * x).log_softmax().sum())

    first = build()
    for _ in range(7):
        small_net(rng)
    assert build() == first


def test_to_dot_is_the_source_of_the_digraph_draw_graph_returns(rng):
    import graphviz

    loss, leaves = small_net(rng)
    graph = mt.draw_graph(loss, rankdir="TB")
    assert isinstance(graph, graphviz.Digraph)
    assert graph.source == mt.to_dot(loss, rankdir="TB")
    assert "rankdir=TB" in graph.source


@requires_dot
def test_the_digraph_displays_inline_in_jupyter_as_svg():
    x = Tensor([1.0], requires_grad=True, name="x")
    bundle = mt.draw_graph(x.exp())._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"]


# -- modules ---------------------------------------------------------------------------------
def scoped_net():
    X = Tensor(np.ones((2, 3)), name="X")
    W1 = Tensor(np.ones((3, 4)), requires_grad=True, name="W1")
    W2 = Tensor(np.ones((4, 2)), requires_grad=True, name="W2")
    with mt.scope("Net"):
        with mt.scope("fc1"):
            h = X @ W1 + 1.0
        with mt.scope("act"):
            h = h.relu()
        with mt.scope("fc2"):
            out = h @ W2
    return out.sum() + (W1 * W1).sum()


def cluster_contents(source: str) -> dict[str, list[str]]:
    """cluster label -> ids of the nodes declared directly inside it (and nested labels)."""
    contents: dict[str, list[str]] = {"": []}
    open_clusters = [""]
    for line in source.splitlines()[1:]:
        if line.strip().startswith("subgraph cluster"):
            open_clusters.append(None)
        elif CLUSTER.match(line):
            label = label_text(CLUSTER.match(line)[1])
            contents[open_clusters[-2]].append(label)
            open_clusters[-1] = label
            contents[label] = []
        elif line.strip() == "}":
            open_clusters.pop()
        elif NODE.match(line):
            contents[open_clusters[-1]].append(NODE.match(line)[1])
    return contents


def test_ops_that_ran_in_a_module_are_drawn_in_one_labelled_cluster_per_module():
    source = mt.to_dot(scoped_net())
    contents = cluster_contents(source)
    assert contents["Net"] == ["fc1", "act", "fc2"]
    assert [nodes_of(source)[i][0].split("\n")[0] for i in contents["fc1"] if i.startswith("op")] == [
        "#0 matmul", "#1 add"]
    assert [i for i in contents["act"]] == ["op2"]


def test_a_parameter_is_drawn_in_the_innermost_module_shared_by_its_uses():
    source = mt.to_dot(scoped_net())
    contents = cluster_contents(source)
    assert node_named(source, "W2")[0] in contents["fc2"]
    assert node_named(source, "W1")[0] in contents[""]  # used in fc1 and again outside Net
    assert node_named(source, "X")[0] in contents[""]  # inputs stay outside every module
    assert "const0" in contents["fc1"]


def test_collapse_draws_one_node_per_innermost_module():
    source = mt.to_dot(scoped_net(), collapse=True)
    nodes = nodes_of(source)
    modules = [nodes[i][0] for i in nodes if i.startswith("module")]
    assert modules == ["fc1\n2 ops: matmul, add\n(2, 4)", "act\n1 op: relu\n(2, 4)",
                       "fc2\n1 op: matmul\n(2, 2)\nW2 (4, 2)"]  # W2 is used in fc2 only
    assert cluster_contents(source)["Net"] == ["module0", "module1", "module2"]
    assert "const0" not in nodes  # the constant added inside fc1 belongs to the module now
    assert node_named(source, "W1")  # used in fc1 and outside Net: still drawn on its own
    edges = edges_of(source)
    assert ("module0", "module1", "") in edges and ("module1", "module2", "") in edges
    into_or_out_of_modules = [e for e in edges if e[0].startswith("module") or e[1].startswith("module")]
    assert len(into_or_out_of_modules) == len(set(into_or_out_of_modules))
    # W1 * W1 runs outside every module and is drawn as without collapse: two arrows.
    w1 = node_named(source, "W1")[0]
    assert len([e for e in edges if e[0] == w1 and not e[1].startswith("module")]) == 2


def test_collapse_draws_a_module_used_again_after_other_ops_as_a_second_node():
    x = Tensor(np.ones((2, 3)))
    W = Tensor(np.ones((3, 3)), requires_grad=True, name="W")
    with mt.scope("lin"):
        h = x @ W
    h = h.tanh()
    with mt.scope("lin"):
        out = (h @ W).sum()
    edges = edges_of(mt.to_dot(out, collapse=True))
    modules = sorted({end for edge in edges for end in edge[:2] if end.startswith("module")})
    assert modules == ["module0", "module1"]
    assert ("module0", "op1", "") in edges and ("op1", "module1", "") in edges
    assert ("module1", "module0", "") not in edges and ("op1", "module0", "") not in edges  # no cycle


def test_collapse_draws_a_modules_own_ops_around_a_childs_as_runs_without_a_cycle():
    x = Tensor(np.ones((2, 3)))
    W1, W2 = Tensor(np.ones((3, 3)), requires_grad=True), Tensor(np.ones((3, 3)), requires_grad=True)
    with mt.scope("Net"):
        with mt.scope("fc1"):
            h = x @ W1
        h = h.relu()  # Net's own op
        with mt.scope("fc2"):
            h = h @ W2
        out = h.relu().sum()  # Net's own ops again
    source = mt.to_dot(out, collapse=True)
    edges = {(a, b) for a, b, _ in edges_of(source) if a.startswith("module") and b.startswith("module")}
    assert edges == {("module0", "module1"), ("module1", "module2"), ("module2", "module3")}
    labels = [nodes_of(source)[f"module{i}"][0].split("\n")[0] for i in range(4)]
    assert labels == ["fc1", "Net", "fc2", "Net"]


def test_collapse_to_a_depth_merges_everything_below_it():
    source = mt.to_dot(scoped_net(), collapse=1)
    nodes = nodes_of(source)
    assert nodes["module0"][0] == "Net\n4 ops: matmul, add, relu\n(2, 2)\nW2 (4, 2)"
    assert sum(i.startswith("op") for i in nodes) == 4  # mul, sum, sum, add outside Net


@pytest.mark.parametrize("collapse", [0, -1, 1.5, "fc1"])
def test_collapse_must_be_a_bool_or_a_positive_depth(collapse):
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="collapse must be"):
        mt.to_dot(x * 2.0, collapse=collapse)


# -- highlighting a gradient report -------------------------------------------------------------
def test_mismatching_rows_of_a_report_are_drawn_in_alarm_colour_with_their_diagnosis(rng):
    loss, _ = small_net(rng)
    report = failing_report(W1="", b1="scaled by 0.2 (a missing 1/N?)", W2="")
    source = mt.to_dot(loss, report=report)
    _, text, attrs = node_named(source, "b1")
    assert text.endswith("scaled by 0.2 (a missing 1/N?)") and 'fillcolor="#ef9a9a"' in attrs
    _, text, attrs = node_named(source, "W1")
    assert text.endswith("gradient matches") and "#ef9a9a" not in attrs


def test_a_mismatching_named_intermediate_is_highlighted_too():
    x = Tensor([1.0], requires_grad=True, name="x")
    h = x.sigmoid().named("h")
    source = mt.to_dot(h.sum(), report=failing_report(h="sign flipped"))
    assert "#ef9a9a" in node_named(source, "h")[2]


def test_a_collapsed_module_shows_the_diagnosis_of_a_tensor_inside_it():
    x = Tensor([1.0], requires_grad=True, name="x")
    with mt.scope("layer"):
        h = x.sigmoid().named("h")
    source = mt.to_dot(h.sum(), report=failing_report(h="sign flipped"), collapse=True)
    text, attrs = nodes_of(source)["module0"]
    assert text.endswith("sign flipped") and "#ef9a9a" in attrs


def test_a_mismatch_with_another_mismatch_downstream_is_drawn_in_orange_as_possibly_inherited():
    x = Tensor([1.0], requires_grad=True, name="x")
    w = Tensor([2.0], requires_grad=True, name="w")
    h = (x * w).named("h")
    source = mt.to_dot(h.tanh().sum(), report=failing_report(h="sign flipped", x="sign flipped", w=""))
    assert 'fillcolor="#ef9a9a"' in node_named(source, "h")[2]
    assert 'fillcolor="#ffe0b2"' in node_named(source, "x")[2]
    assert "#ffe0b2" not in node_named(source, "w")[2] and "#ef9a9a" not in node_named(source, "w")[2]


def test_a_check_manual_report_marks_the_wrong_step_red_and_what_follows_from_it_orange():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 3))
    W = Tensor(rng.standard_normal((3, 2)), requires_grad=True, name="W")
    y = np.array([0, 1, 1, 0])
    scores = (X @ W).named("scores")
    loss = -scores.log_softmax()[np.arange(4), y].mean()
    p = np.exp(scores.data) / np.exp(scores.data).sum(axis=1, keepdims=True)
    dscores = p - np.eye(2)[y]  # the bug: the 1/N of the mean is missing
    report = mt.check_manual(loss, {"scores": dscores, "W": X.T @ dscores})
    source = mt.to_dot(loss, report=report)
    _, text, attrs = node_named(source, "scores")
    assert 'fillcolor="#ef9a9a"' in attrs and "1/N" in text
    assert 'fillcolor="#ffe0b2"' in node_named(source, "W")[2]


def test_a_collapsed_module_names_the_parameter_whose_gradient_mismatches():
    source = mt.to_dot(scoped_net(), collapse=True, report=failing_report(W2="transposed", W1=""))
    text, attrs = nodes_of(source)["module2"]
    assert text.endswith("W2 (4, 2)\nW2: transposed") and 'fillcolor="#ef9a9a"' in attrs


def test_a_mismatching_row_that_names_no_tensor_in_the_graph_is_an_error():
    W = Tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"\['fc1.weight'\].*params=model.named_parameters"):
        mt.to_dot(W * 2.0, report=failing_report(**{"fc1.weight": "transposed"}))


# -- escaping --------------------------------------------------------------------------------
HOSTILE = ['say "hi"', "{braces}", "<b>bold</b>", "back\\slash\\", "two\nlines", '"];evil [label="x',
           "a & b", "tab\there", "</font>]", "-> op0", "\\N \\G \\L", "ünï ✓"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_inside_their_label(name):
    w = Tensor([1.0], requires_grad=True, name=name)
    with mt.scope(name):
        h = (w * 2.0).named(name)
    source = mt.to_dot(h.sum(), report=failing_report(**{name: name}))
    # A tab is not printable, so it is shown as an escape; Graphviz reads a doubled backslash as one.
    shown = name.replace("\t", "\\t").replace("\\", "\\\\")
    nodes = nodes_of(source)
    assert set(nodes) == {"leaf0", "const0", "op0", "op1"}
    assert len(edges_of(source)) == 3
    assert nodes["leaf0"][0] == f"{shown}\n(1,)\n{shown}"
    assert nodes["op0"][0] == f"{shown}\n#0 mul\n(1,)\n{shown}"
    assert list(cluster_contents(source)) == ["", shown]


def test_unprintable_characters_are_shown_as_escapes():
    w = Tensor([1.0], requires_grad=True, name="bell\x07\x00")
    assert node_named(mt.to_dot(w * 2.0), "bell\\\\x07\\\\x00")


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_any_name_gives_one_well_formed_label(name):
    w = Tensor([1.0], requires_grad=True, name=name)
    nodes = nodes_of(mt.to_dot(w * 2.0))
    assert set(nodes) == {"leaf0", "const0", "op0"}


@requires_dot
def test_hostile_names_render_through_dot_as_plain_text(tmp_path):
    tensors = [Tensor([1.0], requires_grad=True, name=name) for name in HOSTILE]
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    path = mt.render_graph(total, tmp_path / "hostile.svg")
    svg = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = {"".join(t.itertext()) for t in svg.iter(f"{ns}text")}
    for name in HOSTILE:
        for line in name.replace("\t", "\\t").split("\n"):
            assert line in texts
    drawn = [g for g in svg.iter(f"{ns}g") if g.get("class") == "node"]
    assert len(drawn) == len(HOSTILE) + len(HOSTILE) - 1


# -- size --------------------------------------------------------------------------------------
def test_a_100000_op_chain_renders_to_dot_without_recursion_errors():
    x = Tensor([1.0], requires_grad=True, name="x")
    y = x
    for _ in range(100_000):
        y = y.tanh()
    source = mt.to_dot(y)
    assert source.count("->") == 100_000
    assert "op99999 [label=<#99999 <b>tanh</b>" in source


# -- rendering to files ------------------------------------------------------------------------
def test_render_graph_writes_the_dot_source_with_nothing_else_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    x = Tensor([1.0], requires_grad=True, name="x")
    y = x.exp()
    path = mt.render_graph(y, tmp_path / "g.dot")
    assert path.read_text() == mt.to_dot(y)


def test_without_dot_a_picture_fails_with_the_install_hint_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"(?s)\.svg needs Graphviz.*apt.*brew.*conda.*\.dot"):
        mt.render_graph(x.exp(), tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_suffix_is_a_value_error_naming_the_formats(tmp_path):
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"render_graph: .*g\.jpg.*\.dot, \.svg, \.png or \.pdf"):
        mt.render_graph(x.exp(), tmp_path / "g.jpg")


def test_a_failed_render_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "g.svg"
    path.write_text("previous picture")
    monkeypatch.setenv("PATH", "")
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="needs Graphviz's `dot` program"):
        mt.render_graph(x.exp(), path)
    assert path.read_text() == "previous picture" and len(list(tmp_path.iterdir())) == 1


def test_writing_into_a_missing_folder_names_the_path_asked_for(tmp_path):
    path = tmp_path / "missing" / "g.dot"
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(FileNotFoundError, match=rf"^\[Errno 2\] render_graph: cannot write '{path}': No "):
        mt.render_graph(x.exp(), path)
    assert list(tmp_path.iterdir()) == []


def test_when_dot_fails_the_error_shows_its_message_and_no_file_is_written(tmp_path, monkeypatch, capfd):
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: out of memory' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"render_graph: Graphviz's dot failed .*out of memory"):
        mt.render_graph(x.exp(), tmp_path / "g.png")
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]
    assert "out of memory" not in capfd.readouterr().err  # in the error only, not printed as well


def test_rendering_through_a_symbolic_link_replaces_the_file_it_names(tmp_path):
    target, link = tmp_path / "graph.dot", tmp_path / "latest.dot"
    target.write_text("old")
    link.symlink_to(target)
    x = Tensor([1.0], requires_grad=True)
    mt.render_graph(x.exp(), link)
    assert link.is_symlink() and target.read_text().startswith("digraph")


@requires_dot
def test_rendering_to_svg_gives_an_svg_document_with_the_parameter_names(rng, tmp_path):
    loss, _ = small_net(rng)
    path = mt.render_graph(loss, tmp_path / "net.svg")
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {"".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"W1", "b1", "W2", "X"} <= texts


@requires_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF-")])
def test_rendering_to_png_and_pdf_gives_files_of_that_format(rng, tmp_path, suffix, magic):
    loss, _ = small_net(rng)
    path = mt.render_graph(loss, tmp_path / f"net{suffix}")
    assert path.read_bytes().startswith(magic) and path.stat().st_size > 1000


# -- bad input ---------------------------------------------------------------------------------
def test_an_output_that_is_not_a_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="draw_graph: the output must be a Tensor .*, got ndarray"):
        mt.draw_graph(np.ones(3))


def test_an_unknown_rankdir_is_a_value_error():
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"rankdir must be one of .* got 'up'"):
        mt.to_dot(x * 2.0, rankdir="up")
