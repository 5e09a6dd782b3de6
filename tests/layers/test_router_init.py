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
