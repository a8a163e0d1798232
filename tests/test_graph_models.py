"""Pictures of nn models: modules as clusters, parameter names, gradients, big networks."""

from __future__ import annotations

import numpy as np
import pytest
from test_graph import cluster_contents, edges_of, node_named, nodes_of

import microtensor as mt
import nn
import nn.manual


@pytest.fixture
def two_layer():
    rng = np.random.default_rng(0)
    model = nn.TwoLayerNet(4, 5, 3, seed=0, dtype=np.float64)
    X = mt.Tensor(rng.standard_normal((8, 4)), name="X")
    loss = nn.functional.cross_entropy(model(X), rng.integers(0, 3, size=8))
    return model, loss


def test_each_child_module_of_a_model_is_a_cluster_inside_the_model(two_layer):
    model, loss = two_layer
    contents = cluster_contents(mt.to_dot(loss))
    assert contents["TwoLayerNet"] == ["fc1", "relu", "fc2"]


def test_every_parameter_is_named_and_drawn_in_its_layer(two_layer):
    model, loss = two_layer
    source = mt.to_dot(loss, params=model.named_parameters())
    contents = cluster_contents(source)
    for name, _ in model.named_parameters():
        layer = name.split(".")[0]
        assert node_named(source, name)[0] in contents[layer]


def test_a_model_graph_has_one_node_per_recorded_op_and_per_leaf(two_layer):
    model, loss = two_layer
    nodes = nodes_of(mt.to_dot(loss, params=model.named_parameters()))
    assert sum(i.startswith("op") for i in nodes) == len(mt.tape(loss)) == 4  # linear, relu, linear, loss
    assert sum(i.startswith("leaf") for i in nodes) == 1 + len(list(model.parameters()))
    assert [nodes[i][0] for i in nodes if i.startswith("const")] == ["array(8,) int64"]  # the labels


def test_the_loss_graph_edges_follow_the_layers(two_layer):
    model, loss = two_layer
    source = mt.to_dot(loss, params=model.named_parameters())
    edges = edges_of(source)
    weight1, weight2 = node_named(source, "fc1.weight")[0], node_named(source, "fc2.weight")[0]
    assert (weight1, "op0", "1") in edges and (weight2, "op2", "1") in edges
    assert ("op1", "op2", "0") in edges  # relu feeds fc2's linear as its input


def test_show_grad_gives_each_parameter_its_gradient_norm_after_backward(two_layer):
    model, loss = two_layer
    loss.backward()
    source = mt.to_dot(loss, params=model.named_parameters(), show_grad=True)
    for name, parameter in model.named_parameters():
        text = node_named(source, name)[1]
        assert text.endswith(f"|grad| = {np.linalg.norm(parameter.grad):.4g}")


def test_sequential_layers_are_clusters_named_by_their_index():
    model = nn.MLP([3, 4, 2], seed=0)
    loss = model(np.ones((2, 3), dtype=np.float32)).sum()
    contents = cluster_contents(mt.to_dot(loss, params=model.named_parameters()))
    assert contents["MLP"] == ["0", "1", "2"]


def test_a_graph_of_thousands_of_ops_collapses_to_one_node_per_layer():
    model = nn.MLP([4] + [4] * 1000 + [2], seed=0)
    loss = nn.functional.cross_entropy(model(np.ones((2, 4), dtype=np.float32)), np.array([0, 1]))
    assert len(mt.tape(loss)) == 2002
    nodes = nodes_of(mt.to_dot(loss, params=model.named_parameters(), collapse=True))
    assert sum(i.startswith("module") for i in nodes) == 1001 + 1000
    assert sum(i.startswith("op") for i in nodes) == 1  # the loss, outside the model
    whole = nodes_of(mt.to_dot(loss, collapse=1))
    assert whole["module0"][0].startswith("MLP\n2001 ops: linear, relu\n")


def test_a_passing_manual_check_marks_every_parameter_as_matching():
    rng = np.random.default_rng(0)
    model = nn.TwoLayerNet(4, 5, 3, seed=0, dtype=np.float64)
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)
    report = nn.manual.check(model, X, y)
    source = mt.to_dot(nn.manual.loss(model, X, y), params=model.named_parameters(), report=report)
    for name, _ in model.named_parameters():
        _, text, attrs = node_named(source, name)
        assert text.endswith("gradient matches") and "#ef9a9a" not in attrs
