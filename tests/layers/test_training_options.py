"""CondConv's training options: a static kernel beside zero-initialised experts, the router's
hidden layer and norm, expert dropout, the routing temperature for both activations, the
expert init scaled to a plain kernel's variance, and configure_condconv applying them to a
built model."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condconv_det.layers import (
    CONDCONV_PATHS,
    ROUTER_NORMS,
    CondConv2d,
    CondConvRouter,
    RoutedCondConv2d,
    configure_condconv,
    set_routing_temperature,
)

from .reference import condconv_reference

PATHS = [p for p in CONDCONV_PATHS]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (4, True)])
def test_static_kernel_starts_as_a_plain_conv_and_adds_the_routed_residual(path, groups, bias):
    torch.manual_seed(0)
    layer = CondConv2d(
        8, 12, 3, padding=1, groups=groups, bias=bias, num_experts=3, static_kernel=True, path=path
    )
    batch = 1 if path == "single" else 3
    x, r = torch.randn(batch, 8, 6, 6), torch.rand(batch, 3)
    plain = F.conv2d(x, layer.static_weight, layer.static_bias, 1, 1, 1, groups)
    assert layer.weight.abs().sum() == 0
    torch.testing.assert_close(layer(x, r), plain)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    # The reference: every example's kernel is W0 + sum_i r_i W_i.
    ones = torch.ones(batch, 1)
    weight = torch.cat([layer.static_weight[None], layer.weight])
    biases = torch.cat([layer.static_bias[None], layer.bias]) if bias else None
    expected = condconv_reference(
        x, torch.cat([ones, r], 1), weight, biases, (1, 1), (1, 1), (1, 1), groups
    )
    torch.testing.assert_close(layer(x, r), expected, rtol=1e-4, atol=1e-5)


def test_static_kernel_gets_gradients_and_so_do_the_experts():
    torch.manual_seed(0)
    layer = CondConv2d(4, 6, 3, padding=1, num_experts=2, static_kernel=True)
    router = CondConvRouter(4, 2)
    x = torch.randn(3, 4, 5, 5)
    layer(x, router(x)).square().sum().backward()
    for p in (layer.static_weight, layer.static_bias, layer.weight, layer.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Zero experts: the routing has no effect yet, so the router gets no gradient at step 0.
    assert router.fc.weight.grad.abs().sum() == 0


def test_add_static_kernel_keeps_expert_0_as_the_static_kernel_and_scripts():
    torch.manual_seed(0)
    layer = CondConv2d(4, 6, 1, num_experts=3)
    expert0 = layer.expert_conv(0)
    assert layer.add_static_kernel() is layer
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x, torch.rand(2, 3)), expert0(x))
    assert "static_weight" in dict(layer.named_parameters())
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(x, torch.rand(2, 3)), expert0(x))
    before = layer.static_weight.clone()
    layer.add_static_kernel()  # a second call changes nothing
    torch.testing.assert_close(layer.static_weight, before)


def test_static_kernel_state_dict_round_trip():
    a = CondConv2d(4, 6, 3, num_experts=2, static_kernel=True)
    b = CondConv2d(4, 6, 3, num_experts=2, static_kernel=True)
    b.load_state_dict(a.state_dict())
    x, r = torch.randn(2, 4, 7, 7), torch.rand(2, 2)
    torch.testing.assert_close(a(x, r), b(x, r))
    with pytest.raises(RuntimeError, match="static_weight"):
        CondConv2d(4, 6, 3, num_experts=2).load_state_dict(a.state_dict())


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_temperature_divides_the_logits_for_both_activations(activation):
    torch.manual_seed(0)
    router = CondConvRouter(16, 4, activation=activation)
    x = torch.randn(3, 16, 4, 4)
    logits = router.fc(x.mean((2, 3)))
    act = torch.sigmoid if activation == "sigmoid" else (lambda z: z.softmax(1))
    torch.testing.assert_close(router(x), act(logits))
    assert set_routing_temperature(nn.Sequential(router), 30.0) == 1
    torch.testing.assert_close(router(x), act(logits / 30.0))
    # A high temperature flattens the routing towards its value at zero logits.
    flat = torch.full((3, 4), 0.5 if activation == "sigmoid" else 0.25)
    assert (router(x) - flat).abs().max() < (act(logits) - flat).abs().max()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        set_routing_temperature(router, 0.0)


@pytest.mark.parametrize("norm", ROUTER_NORMS)
def test_router_hidden_layer_and_norm(norm):
    torch.manual_seed(0)
    router = CondConvRouter(32, 4, hidden_ratio=0.25, norm=norm)
    assert router.reduce.out_features == 8
    assert router.reduce.bias is None if norm else router.reduce.bias is not None
    x = torch.randn(5, 32, 3, 3)
    h = router.reduce(x.mean((2, 3)))
    if norm:
        h = router.norm(h)
    expected = torch.sigmoid(router.fc(h.relu()))
    torch.testing.assert_close(router(x), expected)
    router(x).sum().backward()
    assert all(p.grad is not None for p in router.parameters())
    scripted = torch.jit.script(router.eval())
    torch.testing.assert_close(scripted(x), router(x))


def test_router_norm_without_hidden_layer_normalises_the_pooled_input():
    router = CondConvRouter(8, 3, norm="LN")
    x = torch.randn(4, 8, 3, 3) * 100 + 50
    expected = torch.sigmoid(router.fc(F.layer_norm(x.mean((2, 3)), (8,))))
    torch.testing.assert_close(router(x), expected, rtol=1e-4, atol=1e-5)


def test_zero_init_with_hidden_layer_routes_alike_and_still_learns():
    router = CondConvRouter(16, 4, hidden_ratio=0.5, init="zeros")
    x = torch.randn(3, 16, 4, 4)
    torch.testing.assert_close(router(x), torch.full((3, 4), 0.5))
    (router(x) * torch.randn(3, 4)).sum().backward()
    assert router.fc.weight.grad.abs().sum() > 0
    assert router.reduce.weight.abs().sum() > 0  # the hidden layer is not zeroed


def test_expert_dropout_only_in_training_and_unbiased():
    torch.manual_seed(0)
    router = CondConvRouter(8, 4, init="zeros", expert_dropout=0.25)
    x = torch.randn(4000, 8, 1, 1)
    router.eval()
    torch.testing.assert_close(router(x), torch.full((4000, 4), 0.5))
    router.train()
    r = router(x)
    dropped = (r == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.02
    torch.testing.assert_close(torch.unique(r), torch.tensor([0.0, 0.5 / 0.75]))
    assert abs(r.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("activation,start", [("sigmoid", 0.5), ("softmax", 0.25)])
def test_mixed_variance_init_gives_the_mixed_kernel_a_plain_kernels_variance(activation, start):
    torch.manual_seed(0)
    model = nn.Sequential(
        RoutedCondConv2d(64, 64, 3, num_experts=4, bias=False, routing_activation=activation)
    )
    conv = model[0]
    plain_std = conv.weight[0].std().item()
    configure_condconv(model, expert_init="mixed_variance")
    mixed = (start * conv.weight).sum(0)  # every routing weight at its starting value
    assert math.isclose(mixed.std().item(), plain_std, rel_tol=0.05)
    assert math.isclose(conv.weight[0].std().item(), plain_std / (start * 2), rel_tol=0.05)


def test_configure_condconv_rebuilds_routers_and_adds_static_kernels():
    torch.manual_seed(0)
    model = nn.Sequential(
        RoutedCondConv2d(
            8, 8, 3, padding=1, num_experts=4, routing_activation="softmax", routing_temperature=2.0
        ),
        nn.ReLU(),
        RoutedCondConv2d(8, 8, 1, num_experts=4),
    )
    expert0 = [model[0].expert_conv(0), model[2].expert_conv(0)]
    out = configure_condconv(
        model,
        static_kernel=True,
        router_hidden_ratio=0.5,
        router_norm="BN",
        expert_dropout=0.1,
        router_init="zeros",
    )
    assert out is model
    router = model[0].router
    assert (router.activation, router.temperature, router.expert_dropout) == ("softmax", 2.0, 0.1)
    assert isinstance(router.norm, nn.BatchNorm1d) and router.reduce.out_features == 4
    assert router.fc.weight.abs().sum() == 0
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(model.eval()(x), expert0[1](expert0[0](x).relu()))
    # Applying the same options again changes nothing.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    configure_condconv(
        model, static_kernel=True, router_hidden_ratio=0.5, router_norm="BN", expert_dropout=0.1
    )
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="expert_init must be one of"):
        configure_condconv(model, expert_init="orthogonal")


def test_configure_condconv_keeps_frozen_routers_frozen():
    model = nn.Sequential(RoutedCondConv2d(8, 8, 1, num_experts=2))
    model.requires_grad_(False)
    configure_condconv(model, static_kernel=True, router_hidden_ratio=0.5)
    assert not any(p.requires_grad for p in model.parameters())


def test_detached_router_input_sends_no_gradient_into_the_features():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    router = CondConvRouter(8, 4, detach_input=True)
    router(x).square().sum().backward()
    assert x.grad is None
    assert router.fc.weight.grad.abs().sum() > 0
    # In a routed layer the features still get the convolution's gradient, and the routing is
    # the same function of the input.
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4)
    detached = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4)
    detached.load_state_dict(layer.state_dict())
    configure_condconv(detached, router_detach_input=True)
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    torch.testing.assert_close(layer(x1), detached(x2))
    layer(x1).sum().backward()
    detached(x2).sum().backward()
    assert x2.grad.abs().sum() > 0 and not torch.allclose(x1.grad, x2.grad)
    torch.testing.assert_close(layer.router.fc.weight.grad, detached.router.fc.weight.grad)


@pytest.mark.parametrize("groups,bias,batch", [(1, True, 3), (4, False, 2), (1, False, 1)])
def test_normalized_kernel_is_the_unit_norm_mixed_kernel_per_example(groups, bias, batch):
    torch.manual_seed(0)
    layer = CondConv2d(
        8, 12, 3, padding=1, groups=groups, bias=bias, num_experts=3, normalize_kernel=True
    )
    x, r = torch.randn(batch, 8, 6, 6), torch.rand(batch, 3)
    outputs = []
    for b in range(batch):
        kernel = (r[b, :, None, None, None, None] * layer.weight).sum(0)
        kernel = kernel / kernel.flatten(1).norm(dim=1)[:, None, None, None]
        kernel_bias = (r[b, :, None] * layer.bias).sum(0) if bias else None
        outputs.append(F.conv2d(x[b : b + 1], kernel, kernel_bias, 1, 1, 1, groups))
    torch.testing.assert_close(layer(x, r), torch.cat(outputs), rtol=1e-4, atol=1e-5)
    # Scaling one example's routing (its kernel's gain) changes nothing but the bias.
    if not bias:
        torch.testing.assert_close(layer(x, r * 3.0), layer(x, r), rtol=1e-4, atol=1e-5)
    layer(x, r.requires_grad_()).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and r.grad is not None
    torch.testing.assert_close(torch.jit.script(layer)(x, r), layer(x, r))


def test_configure_condconv_turns_on_kernel_normalisation():
    model = nn.Sequential(RoutedCondConv2d(8, 8, 1, num_experts=2))
    configure_condconv(model, normalize_kernel=True)
    assert model[0].normalize_kernel and "normalize_kernel=True" in repr(model)


@pytest.mark.parametrize("experts", [2, 8])
def test_shared_init_starts_and_learns_as_the_static_twin(experts):
    # Every expert from one plain kernel, routing at 1/sqrt(E) for every input: the layer
    # computes its static twin's output, and (routing held) its SGD steps are the twin's.
    torch.manual_seed(0)
    layer = configure_condconv(
        nn.Sequential(RoutedCondConv2d(8, 8, 3, padding=1, num_experts=experts)),
        expert_init="shared",
    )[0]
    x, target = torch.randn(4, 8, 7, 7), torch.randn(4, 8, 7, 7)
    routing = layer.router(x)
    torch.testing.assert_close(routing, torch.full_like(routing, 1 / math.sqrt(experts)))
    static = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        static.weight.copy_((routing[0, :, None, None, None, None] * layer.weight).sum(0))
        static.bias.copy_((routing[0, :, None] * layer.bias).sum(0))
    assert not torch.equal(layer.weight[0], layer.weight[1])  # the experts can grow apart
    torch.testing.assert_close(layer(x), static(x), rtol=1e-5, atol=1e-5)
    layer.router.requires_grad_(False)
    opts = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        for m in (static, layer)
    ]
    for _ in range(3):
        for m, opt in zip((static, layer), opts):
            opt.zero_grad()
            F.mse_loss(m(x), target).backward()
            opt.step()
    torch.testing.assert_close(layer(x), static(x), rtol=1e-4, atol=1e-5)


def test_router_dropout_follows_its_own_mode():
    """Monte-Carlo dropout: a router in eval whose dropout is put back in training still drops."""
    torch.manual_seed(0)
    router = CondConvRouter(64, 4, dropout=0.5).eval()
    x = torch.randn(2, 64, 3, 3)
    torch.testing.assert_close(router(x), router(x))
    router.dropout.train()
    assert not torch.allclose(router(x), router(x))
    scripted = torch.jit.script(router)
    assert not torch.allclose(scripted(x), scripted(x))
