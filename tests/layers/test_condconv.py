"""CondConv2d behaviour: reduction to nn.Conv2d, expert selection, batch independence, init,
and errors for bad input."""

import math

import pytest
import torch
from torch import nn

from condconv_det.layers import CondConv2d, CondConvRouter


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
        dict(kernel_size=3, padding=1, groups=4),
        dict(kernel_size=4, padding="same"),  # asymmetric: extra row/column bottom/right
        dict(kernel_size=3, padding="valid"),
        dict(kernel_size=3, padding=1, padding_mode="reflect"),
        dict(kernel_size=3, padding=2, padding_mode="replicate"),
        dict(kernel_size=3, padding=1, padding_mode="circular"),
    ],
    ids=str,
)
@pytest.mark.parametrize("path", ["auto", "grouped", "matmul"])
def test_one_expert_with_routing_one_equals_conv2d(kwargs, path):
    torch.manual_seed(0)
    out_channels = 4 if kwargs.get("groups", 1) == 4 else 6
    conv = nn.Conv2d(4, out_channels, **kwargs)
    cond = CondConv2d(4, out_channels, num_experts=1, path=path, **kwargs)
    with torch.no_grad():
        cond.weight.copy_(conv.weight[None])
        if conv.bias is not None:
            cond.bias.copy_(conv.bias[None])
    x = torch.randn(3, 4, 10, 11)
    torch.testing.assert_close(cond(x, torch.ones(3, 1)), conv(x), rtol=1e-4, atol=1e-5)


def test_constructor_order_matches_conv2d():
    # Positional arguments in nn.Conv2d's order; num_experts follows them.
    cond = CondConv2d(4, 6, 3, 2, 1, 1, 2, False, "zeros", 5)
    assert (cond.in_channels, cond.out_channels, cond.kernel_size, cond.stride) == (
        4,
        6,
        (3, 3),
        (2, 2),
    )
    assert (cond.padding, cond.dilation, cond.groups, cond.bias) == ((1, 1), (1, 1), 2, None)
    assert cond.num_experts == 5
    assert cond.weight.shape == (5, 6, 2, 3, 3)


@pytest.mark.parametrize("path", ["auto", "grouped", "matmul"])
def test_one_hot_routing_selects_that_expert(path):
    torch.manual_seed(0)
    cond = CondConv2d(4, 6, 3, padding=1, num_experts=4, path=path)
    x = torch.randn(4, 4, 8, 8)
    routing = torch.eye(4)  # example b uses expert b alone
    out = cond(x, routing)
    for expert in range(4):
        want = cond.expert_conv(expert)(x[expert : expert + 1])
        torch.testing.assert_close(out[expert : expert + 1], want, rtol=1e-4, atol=1e-5)
    # And the experts really differ, so the check above could tell them apart.
    assert not torch.allclose(cond.expert_conv(0)(x), cond.expert_conv(1)(x))


@pytest.mark.parametrize("path", ["auto", "grouped", "matmul"])
def test_each_example_is_independent_of_the_rest_of_the_batch(path):
    torch.manual_seed(0)
    cond = CondConv2d(4, 6, 3, padding=1, num_experts=4, path=path)
    x, routing = torch.randn(3, 4, 8, 8), torch.rand(3, 4)
    out = cond(x, routing)
    x2, routing2 = x.clone(), routing.clone()
    x2[1:] = torch.randn(2, 4, 8, 8)
    routing2[1:] = torch.rand(2, 4)
    out2 = cond(x2, routing2)
    torch.testing.assert_close(out2[0], out[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out2[1:], out[1:])
    # Alone, as a batch of one (the "single" path), example 0 gives the same output.
    torch.testing.assert_close(cond(x[:1], routing[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_gradient_with_a_shared_router():
    torch.manual_seed(0)
    router = CondConvRouter(4, num_experts=3)
    conv1 = CondConv2d(4, 8, 1, num_experts=3)
    conv2 = CondConv2d(8, 8, 3, padding=1, groups=8, num_experts=3)
    conv3 = CondConv2d(8, 4, 1, num_experts=3, bias=False)
    x = torch.randn(2, 4, 6, 6)
    r = router(x)
    y = conv3(conv2(conv1(x, r).relu(), r).relu(), r)
    y.square().mean().backward()
    modules = {"router": router, "conv1": conv1, "conv2": conv2, "conv3": conv3}
    for module_name, module in modules.items():
        for name, param in module.named_parameters():
            assert param.grad is not None, f"{module_name}.{name} has no gradient"
            assert param.grad.abs().sum() > 0, f"{module_name}.{name} has a zero gradient"


@pytest.mark.parametrize(
    "in_channels,out_channels,kernel,groups",
    [(64, 128, 3, 1), (96, 96, 3, 96), (256, 64, 1, 1), (32, 64, 5, 4)],
)
def test_each_expert_is_initialised_like_conv2d(in_channels, out_channels, kernel, groups):
    torch.manual_seed(0)
    experts = 8
    cond = CondConv2d(in_channels, out_channels, kernel, groups=groups, num_experts=experts)
    convs = [nn.Conv2d(in_channels, out_channels, kernel, groups=groups) for _ in range(experts)]
    fan_in = in_channels // groups * kernel * kernel
    bound = 1 / math.sqrt(fan_in)  # nn.Conv2d: kaiming_uniform(a=sqrt(5)) -> U(-bound, bound)
    ref_std = torch.stack([c.weight.std() for c in convs]).mean()
    ref_bias_std = torch.stack([c.bias.std() for c in convs]).mean()
    for e in range(experts):
        w = cond.weight[e]
        assert w.abs().max() <= bound + 1e-7
        assert w.abs().max() > 0.95 * bound
        # Uniform(-bound, bound) has std bound / sqrt(3).
        assert abs(w.std() - ref_std) < 0.1 * ref_std, f"expert {e}: {w.std()} vs {ref_std}"
        assert abs(w.mean()) < 0.1 * ref_std
        assert abs(cond.bias[e].std() - ref_bias_std) < 0.35 * ref_bias_std
        assert cond.bias[e].abs().max() <= bound + 1e-7
    # Experts are initialised independently.
    assert not torch.allclose(cond.weight[0], cond.weight[1])


def test_router_starts_at_one_half_and_sums_to_one_with_softmax():
    torch.manual_seed(0)
    x = torch.randn(5, 16, 4, 4)
    sigmoid = CondConvRouter(16, num_experts=4)
    torch.testing.assert_close(sigmoid(torch.zeros(2, 16, 4, 4)), torch.full((2, 4), 0.5))
    r = sigmoid(x)
    assert r.shape == (5, 4) and (r > 0).all() and (r < 1).all()

    softmax = CondConvRouter(16, num_experts=4, activation="softmax", temperature=30.0)
    r = softmax(x)
    torch.testing.assert_close(r.sum(dim=1), torch.ones(5))
    # A higher temperature flattens the distribution.
    sharp = CondConvRouter(16, num_experts=4, activation="softmax", temperature=0.1)
    sharp.load_state_dict(softmax.state_dict())
    assert sharp(x).max(dim=1).values.mean() > r.max(dim=1).values.mean()


def test_router_dropout_only_in_training():
    torch.manual_seed(0)
    router = CondConvRouter(64, num_experts=4, dropout=0.5)
    x = torch.randn(2, 64, 3, 3)
    router.eval()
    torch.testing.assert_close(router(x), router(x))
    router.train()
    assert not torch.allclose(router(x), router(x))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: CondConv2d(4, 6, 3, num_experts=0), "num_experts >= 1"),
        (lambda: CondConv2d(4, 6, 3, groups=3), "in_channels (4) must be divisible by groups (3)"),
        (lambda: CondConv2d(4, 6, 3, groups=4), "out_channels (6) must be divisible by groups (4)"),
        (lambda: CondConv2d(4, 6, 3, padding_mode="mirror"), "padding_mode"),
        (lambda: CondConv2d(4, 6, 3, stride=2, padding="same"), "padding='same'"),
        (lambda: CondConv2d(4, 6, 3, path="fast"), "path must be one of"),
        (lambda: CondConvRouter(4, 0), "num_experts >= 1"),
        (lambda: CondConvRouter(4, 2, activation="relu"), "activation must be one of"),
        (lambda: CondConvRouter(4, 2, temperature=-1.0), "temperature must be > 0"),
        (lambda: CondConvRouter(4, 2, hidden_ratio=-0.5), "hidden_ratio must be >= 0"),
        (lambda: CondConvRouter(4, 2, norm="GN"), "norm must be one of"),
        (lambda: CondConvRouter(4, 2, expert_dropout=1.0), "expert_dropout must be in [0, 1)"),
        (
            lambda: CondConvRouter(4, 2, activation="softmax", temperature=0),
            "temperature must be > 0",
        ),
        (lambda: CondConvRouter(4, 2, dropout=1.0), "dropout must be in [0, 1)"),
    ],
)
def test_bad_construction_is_a_clear_error(build, message):
    with pytest.raises(ValueError) as info:
        build()
    assert message in str(info.value)


def test_bad_forward_input_is_a_clear_error():
    cond = CondConv2d(4, 6, 3, num_experts=4)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(
        ValueError, match=r"routing_weights of shape \(B, num_experts\) = \(2, 4\), got \[2, 3\]"
    ):
        cond(x, torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"routing_weights .* got \[3, 4\]"):
        cond(x, torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"input of shape \(B, 4, H, W\), got \[2, 5, 8, 8\]"):
        cond(torch.randn(2, 5, 8, 8), torch.rand(2, 4))
    with pytest.raises(ValueError, match="batch of one"):
        CondConv2d(4, 6, 3, num_experts=4, path="single")(x, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"CondConvRouter expects input of shape \(B, 4, H, W\)"):
        CondConvRouter(4, 2)(torch.randn(2, 3, 5, 5))
