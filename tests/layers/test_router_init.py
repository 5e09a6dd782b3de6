"""Router initialisation: the official Glorot init, or zeros (every example routed alike)."""

import pytest
import torch

from condconv_det.layers import CondConvRouter, RoutedCondConv2d, reset_routers


def test_glorot_routes_examples_differently_zeros_alike():
    x = torch.randn(4, 16, 5, 5)
    glorot = CondConvRouter(16, 8)(x)
    assert not torch.allclose(glorot[0], glorot[1])
    zeros = CondConvRouter(16, 8, init="zeros")(x)
    torch.testing.assert_close(zeros, torch.full((4, 8), 0.5))


def test_zero_init_still_learns_to_route():
    router = CondConvRouter(16, 4, init="zeros")
    x = torch.randn(4, 16, 5, 5)
    (router(x) * torch.randn(4, 4)).sum().backward()
    assert router.fc.weight.grad.abs().sum() > 0


def test_reset_routers_reaches_every_router():
    model = torch.nn.Sequential(
        RoutedCondConv2d(8, 8, 3, num_experts=4), RoutedCondConv2d(8, 8, 1, num_experts=2)
    )
    assert reset_routers(model, "zeros") is model
    assert all(
        m.fc.weight.abs().sum() == 0 for m in model.modules() if isinstance(m, CondConvRouter)
    )
    with pytest.raises(ValueError, match="init must be one of"):
        reset_routers(model, "normal")


@pytest.mark.parametrize("options", [dict(router_hidden_ratio=0.25), dict(router_norm="LN")])
def test_routers_rebuilt_by_the_options_start_as_router_init_says(options):
    # A builder's router_init and a condconv_options that rebuilds the routers (another hidden
    # layer or norm): the rebuilt routers must not fall back to Glorot.
    from condconv_det.layers import set_up_routers

    def model():
        return torch.nn.Sequential(
            RoutedCondConv2d(8, 8, 3, num_experts=4), RoutedCondConv2d(8, 8, 1, num_experts=2)
        )

    x = torch.randn(3, 8, 5, 5)
    zeros = set_up_routers(model(), "zeros", options)
    routers = [m for m in zeros.modules() if isinstance(m, CondConvRouter)]
    assert len(routers) == 2 and all(r.fc.weight.abs().sum() == 0 for r in routers)
    assert all(r(x).eq(0.5).all() for r in routers)  # every example routed alike
    if "router_hidden_ratio" in options:
        assert all(r.reduce.out_features == 4 for r in routers)  # at least 4 units
    # The options' own init wins; without router_init each router keeps the options' default.
    glorot = set_up_routers(model(), "zeros", dict(options, router_init="glorot"))
    assert all(
        r.fc.weight.abs().sum() > 0 for r in glorot.modules() if isinstance(r, CondConvRouter)
    )
    kept = set_up_routers(model(), None, options)
    assert all(r.fc.weight.abs().sum() > 0 for r in kept.modules() if isinstance(r, CondConvRouter))
