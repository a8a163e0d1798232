"""nn.Module, Parameter, Sequential, the layers and the models: registration, names, scopes, state."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, torch

import microtensor as mt
import nn


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3, seed=0)
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.b = nn.Linear(3, 1, seed=1)

    def forward(self, x):
        return self.b(self.a(x) * self.scale)


# -- registration and names ----------------------------------------------------------------------
def test_parameter_is_a_tensor_that_requires_grad():
    p = nn.Parameter(np.zeros(2))
    assert isinstance(p, mt.Tensor) and p.requires_grad and p.is_leaf


def test_parameter_of_integers_is_a_type_error():
    with pytest.raises(TypeError, match="floating"):
        nn.Parameter(np.arange(3))


def test_parameters_and_submodules_register_in_assignment_order_with_dotted_names():
    names = [name for name, _ in Pair().named_parameters()]
    assert names == ["scale", "a.weight", "a.bias", "b.weight", "b.bias"]


def test_parameters_lists_the_same_objects_as_named_parameters():
    model = Pair()
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]


def test_named_modules_is_preorder_with_self_first_named_empty():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    names = [name for name, _ in model.named_modules()]
    assert names == ["", "0", "1", "1.0", "1.1"]


def test_children_are_the_direct_submodules_only():
    model = nn.TwoLayerNet(2, 3, 2)
    assert list(model.children()) == [model.fc1, model.relu, model.fc2]


def test_a_parameter_shared_by_two_modules_is_listed_once():
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    second.weight = first.weight
    assert len(list(nn.Sequential(first, second).parameters())) == 3


def test_reassigning_an_attribute_to_a_plain_value_unregisters_it():
    layer = nn.Linear(2, 2)
    layer.bias = None
    assert [name for name, _ in layer.named_parameters()] == ["weight"]


def test_assigning_before_module_init_says_to_call_super_init():
    class Forgetful(nn.Module):
        def __init__(self):
            self.w = nn.Parameter([1.0])

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgetful()


def test_sequential_registers_layers_as_numbered_children():
    seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    assert [name for name, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU)


def test_sequential_rejects_something_that_is_not_a_module():
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_forward_of_the_base_class_is_not_implemented():
    with pytest.raises(NotImplementedError, match="Module"):
        nn.Module()(1)


# -- scopes --------------------------------------------------------------------------------------
def test_ops_in_a_child_carry_the_root_class_and_the_attribute_name_as_scope():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    out = model(np.ones((1, 2), dtype=np.float32))
    assert recorded_scopes(out) == {("TwoLayerNet", "fc1"), ("TwoLayerNet", "relu"), ("TwoLayerNet", "fc2")}


def test_sequential_children_are_scoped_by_their_index():
    out = nn.Sequential(nn.Linear(2, 2), nn.Tanh())(np.ones((1, 2), dtype=np.float32))
    assert out._node.scope == ("Sequential", "1")


def test_scope_is_closed_after_the_call():
    nn.TwoLayerNet(2, 3, 2)(np.ones((1, 2), dtype=np.float32))
    y = mt.Tensor([1.0], requires_grad=True) * 2
    assert y._node.scope == ()


def test_scope_is_closed_when_forward_raises_and_inside_an_outer_scope():
    model = nn.TwoLayerNet(2, 3, 2)
    with mt.scope("outer"):
        with pytest.raises(ValueError, match="linear"):
            model(np.ones((1, 5), dtype=np.float32))  # fc1 wants 2 features
        assert mt.scope.state.current == ("outer",)
        out = model(np.ones((1, 2), dtype=np.float32))
    assert out._node.scope == ("outer", "TwoLayerNet", "fc2")
    assert mt.scope.state.current == ()


def recorded_scopes(out):
    """The scope of every recorded op ``out`` depends on (read from the tape nodes, as the renderer does)."""
    scopes, stack = set(), [out]
    while stack:
        t = stack.pop()
        if isinstance(t, mt.Tensor) and t._node is not None:
            scopes.add(t._node.scope)
            stack.extend(t._node.inputs)
    return scopes


# -- training mode and gradients -----------------------------------------------------------------
def test_train_and_eval_set_training_on_every_module_and_return_self():
    model = nn.MLP([2, 4, 2], dropout=0.5)
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_clears_every_parameter_gradient():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    nn.functional.cross_entropy(model(np.ones((2, 2), dtype=np.float32)), np.array([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_zero_grad_without_set_to_none_zeroes_every_gradient_in_place():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    nn.functional.cross_entropy(model(np.ones((2, 2), dtype=np.float32)), np.array([0, 1])).backward()
    held = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), held))


# -- state dict ----------------------------------------------------------------------------------
def test_state_dict_is_a_copy_keyed_by_dotted_names():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    state = model.state_dict()
    assert list(state) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    state["fc1.weight"][...] = 7.0
    assert not np.any(model.fc1.weight.data == 7.0)


def test_load_state_dict_round_trip_restores_every_array_in_place():
    source, target = nn.ThreeLayerNet(3, 4, 5, 2, seed=0), nn.ThreeLayerNet(3, 4, 5, 2, seed=1)
    weight_object = target.fc2.weight
    target.load_state_dict(source.state_dict())
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    assert target.fc2.weight is weight_object


def test_backward_through_a_graph_recorded_before_load_state_dict_is_refused():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    stale = model(np.ones((1, 2), np.float32)).sum()
    model.load_state_dict(nn.TwoLayerNet(2, 3, 2, seed=1).state_dict())
    with pytest.raises(RuntimeError, match="in place"):
        stale.backward()


def _mangled(state, key, value):
    state = dict(state)
    state[key] = value
    return state


@pytest.mark.parametrize("change, message", [
    (lambda s: {k: v for k, v in s.items() if k != "fc2.bias"}, r"missing keys \['fc2.bias'\]"),
    (lambda s: _mangled(s, "fc3.weight", np.zeros(2)), "unexpected keys"),
    (lambda s: _mangled(s, "fc1.weight", np.zeros((3, 2), np.float32)), r"shape \(3, 2\), expected \(2, 3\)"),
    (lambda s: _mangled(s, "fc1.bias", np.zeros(3, np.float64)), "dtype float64, expected float32"),
])
def test_load_state_dict_rejects_a_mismatch_and_changes_nothing(change, message):
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    before = model.state_dict()
    bad = change(nn.TwoLayerNet(2, 3, 2, seed=5).state_dict())
    with pytest.raises(nn.StateDictError, match=message):
        model.load_state_dict(bad)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_into_a_read_only_parameter_is_refused_before_anything_changes():
    model = nn.TwoLayerNet(2, 3, 2, seed=0)
    model.fc2.weight.data = np.frombuffer(model.fc2.weight.data.tobytes(), np.float32).reshape(3, 2)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"^TwoLayerNet.load_state_dict: parameters \['fc2.weight'\] hold "
                                         r"read-only arrays .*nothing was changed"):
        model.load_state_dict(nn.TwoLayerNet(2, 3, 2, seed=1).state_dict())
    for name, value in model.state_dict().items():  # fc1 comes first: a partial load would show there
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_state_dict_error_is_a_value_error_listing_every_problem():
    state = nn.TwoLayerNet(2, 3, 2).state_dict()
    del state["fc1.bias"]
    state["fc2.weight"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="missing keys.*fc2.weight"):
        nn.TwoLayerNet(2, 3, 2).load_state_dict(state)


# -- layers --------------------------------------------------------------------------------------
def test_linear_computes_x_at_w_plus_b_with_weight_in_by_out():
    layer = nn.Linear(3, 2, dtype=np.float64, seed=0)
    layer.bias.data[:] = [1.0, -1.0]
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(layer(x).data, x @ layer.weight.data + layer.bias.data)
    assert layer.weight.shape == (3, 2)


def test_linear_without_bias_has_only_a_weight():
    layer = nn.Linear(3, 2, bias=False)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_linear_gradient_matches_the_manual_formula():
    layer = nn.Linear(3, 2, dtype=np.float64, seed=0)
    x = mt.Tensor(np.random.default_rng(1).normal(size=(4, 3)), requires_grad=True)
    out = layer(x).tanh().sum()
    out.backward()
    upstream = 1 - np.tanh(x.data @ layer.weight.data + layer.bias.data) ** 2
    np.testing.assert_allclose(layer.weight.grad, x.data.T @ upstream)
    np.testing.assert_allclose(layer.bias.grad, upstream.sum(axis=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_keeps_the_requested_dtype(dtype):
    layer = nn.Linear(4, 3, dtype=dtype)
    assert layer.weight.dtype == dtype and layer.bias.dtype == dtype


def test_kaiming_init_has_std_sqrt_two_over_fan_in_and_zero_bias():
    layer = nn.Linear(200, 300, seed=0)
    assert abs(layer.weight.data.std() - np.sqrt(2 / 200)) < 0.02 * np.sqrt(2 / 200)
    assert abs(layer.weight.data.mean()) < 0.002
    assert not layer.bias.data.any()


def test_xavier_init_is_uniform_within_the_glorot_limit():
    layer = nn.Linear(200, 300, init="xavier", seed=0)
    limit = np.sqrt(6 / 500)
    assert np.abs(layer.weight.data).max() <= limit
    assert abs(layer.weight.data.std() - limit / np.sqrt(3)) < 0.02 * limit


def test_small_init_is_the_notebooks_point_zero_one_randn():
    layer = nn.Linear(200, 300, init="small", seed=0)
    assert abs(layer.weight.data.std() - 0.01) < 0.0002


def test_unknown_init_names_the_choices():
    with pytest.raises(ValueError, match="unknown init 'he'.*kaiming"):
        nn.Linear(2, 2, init="he")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_linear_rejects_a_size_that_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(bad, 2)


def test_same_seed_gives_same_weights_and_different_seeds_differ():
    a, b, c = (nn.TwoLayerNet(4, 5, 3, seed=seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a.fc2.weight.data, b.fc2.weight.data)
    assert not np.allclose(a.fc1.weight.data, c.fc1.weight.data)


def test_layers_of_a_seeded_model_are_not_initialised_alike():
    model = nn.ThreeLayerNet(5, 5, 5, 5, seed=0)
    assert not np.allclose(model.fc1.weight.data, model.fc2.weight.data)


@pytest.mark.parametrize("layer, reference", [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (nn.Tanh(), np.tanh),
    (nn.LogSoftmax(), lambda x: x - np.log(np.exp(x).sum(axis=-1, keepdims=True))),
    (nn.LogSoftmax(axis=0), lambda x: x - np.log(np.exp(x).sum(axis=0, keepdims=True))),
])
def test_activation_layers_match_their_numpy_formula(layer, reference):
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_allclose(layer(mt.Tensor(x)).data, reference(x), rtol=1e-12)


def test_dropout_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p():
    out = nn.Dropout(0.25, seed=0)(mt.Tensor(np.ones((200, 100)))).data
    assert set(np.unique(out)) == {0.0, 1 / 0.75}
    assert abs((out == 0).mean() - 0.25) < 0.01


def test_dropout_keeps_the_expected_value():
    out = nn.Dropout(0.5, seed=1)(mt.Tensor(np.full((400, 100), 3.0))).data
    assert abs(out.mean() - 3.0) < 0.05


def test_dropout_gradient_is_the_same_mask_and_scale():
    x = mt.Tensor(np.ones((50, 20)), requires_grad=True)
    out = nn.Dropout(0.5, seed=0)(x)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, out.data)


def test_dropout_is_the_identity_in_eval_mode():
    x = mt.Tensor(np.arange(5.0))
    np.testing.assert_array_equal(nn.Dropout(0.9).eval()(x).data, x.data)


def test_dropout_with_p_one_zeroes_everything():
    np.testing.assert_array_equal(nn.Dropout(1.0)(mt.Tensor(np.ones(4))).data, np.zeros(4))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_p_outside_zero_one(p):
    with pytest.raises(ValueError, match="Dropout: p must be a probability"):
        nn.Dropout(p)


# -- models --------------------------------------------------------------------------------------
def test_two_layer_net_is_fc1_relu_fc2_and_computes_the_notebook_formula():
    model = nn.TwoLayerNet(4, 6, 3, seed=0, dtype=np.float64)
    assert [name for name, _ in model.named_children()] == ["fc1", "relu", "fc2"]
    x = np.random.default_rng(0).normal(size=(5, 4))
    p = {k: v.data for k, v in model.named_parameters()}
    expected = np.maximum(x @ p["fc1.weight"] + p["fc1.bias"], 0) @ p["fc2.weight"] + p["fc2.bias"]
    np.testing.assert_allclose(model(x).data, expected, rtol=1e-12)


def test_three_layer_net_has_the_contract_children_in_order():
    model = nn.ThreeLayerNet(4, 6, 5, 3)
    assert [name for name, _ in model.named_children()] == ["fc1", "relu1", "fc2", "relu2", "fc3"]
    assert model(np.ones((2, 4), np.float32)).shape == (2, 3)


def test_models_default_to_float32_and_accept_float64():
    assert nn.TwoLayerNet(2, 2, 2).fc1.weight.dtype == np.float32
    assert nn.MLP([2, 2], dtype=np.float64)[0].weight.dtype == np.float64


def test_mlp_is_a_chain_of_linear_and_activation_with_dropout_between():
    model = nn.MLP([4, 8, 6, 2], activation="sigmoid", dropout=0.2, seed=0)
    kinds = [type(m).__name__ for _, m in list(model.named_modules())[1:]]
    assert kinds == ["Linear", "Sigmoid", "Dropout", "Linear", "Sigmoid", "Dropout", "Linear"]
    assert [n for n, _ in model.named_parameters()][:2] == ["0.weight", "0.bias"]


def test_mlp_rejects_an_unknown_activation_and_too_few_sizes():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        nn.MLP([2, 2], activation="gelu")
    with pytest.raises(ValueError, match="at least an input and an output"):
        nn.MLP([2])


def test_repr_lists_children_like_torch():
    text = repr(nn.TwoLayerNet(2, 3, 2))
    assert "(fc1): Linear(in_features=2, out_features=3, bias=True)" in text


@requires_torch
def test_two_layer_net_forward_matches_torch_with_the_same_weights():
    model = nn.TwoLayerNet(4, 6, 3, seed=0, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(5, 4))
    p = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    expected = torch.relu(torch.tensor(x) @ p["fc1.weight"] + p["fc1.bias"]) @ p["fc2.weight"] + p["fc2.bias"]
    np.testing.assert_allclose(model(x).data, expected.numpy(), rtol=1e-12)


def test_import_nn_gives_the_whole_api_contract():
    names = ["Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "Dropout",
             "LogSoftmax", "TwoLayerNet", "ThreeLayerNet", "MLP", "functional", "optim", "data", "manual",
             "save", "load", "fit", "evaluate", "predict"]
    assert [name for name in names if not hasattr(nn, name)] == []
    assert callable(nn.manual.gradients) and callable(nn.data.load_mnist) and callable(nn.optim.StepLR)


def test_assigning_a_plain_tensor_over_a_parameter_is_a_type_error_and_keeps_it_registered():
    layer = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="cannot assign a Tensor to parameter 'weight'"):
        layer.weight = mt.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
