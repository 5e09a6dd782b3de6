"""condconv_det.routing_analysis.kernels: each conv goes to the router that drives it, and the
spread of the mixed kernels equals the one computed from every image's kernel formed in full."""

import numpy as np
import pytest
import torch
from torch import nn

from condconv_det.layers import CondConv2d, CondConvRouter, RoutedCondConv2d
from condconv_det.routing_analysis import kernel_spread, routed_kernels, summarize_routing


class Block(nn.Module):
    """A block's router driving two convs, and inside it a conv that routes itself."""

    def __init__(self, experts: int, static_kernel: bool = False):
        super().__init__()
        self.router = CondConvRouter(4, experts)
        self.depthwise = CondConv2d(4, 4, 3, groups=4, num_experts=experts)
        self.pointwise = CondConv2d(4, 6, 1, num_experts=experts, static_kernel=static_kernel)
        self.inner = RoutedCondConv2d(6, 6, 1, num_experts=2)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(3, static_kernel=True)
        self.plain = nn.Conv2d(6, 6, 1)


def reference(weights, kernels, member):
    """Every image's kernel formed in full: the root-mean-square distance from the mean kernel
    over its norm, and the variance of the class-mean kernels over the per-image variance."""
    per_image = []
    for r in torch.from_numpy(weights):
        parts = []
        for experts, static in kernels:
            k = (r[:, None] * torch.from_numpy(experts)).sum(0)
            parts.append(k if static is None else k + torch.from_numpy(static))
        per_image.append(torch.cat(parts))
    per_image = torch.stack(per_image)  # (N, D)
    mean = per_image.mean(0)
    variance = ((per_image - mean) ** 2).sum(1).mean()
    spread = float((variance / (mean**2).sum()).sqrt())
    member = torch.from_numpy(member).double()
    class_kernels = (member.T @ per_image) / member.sum(0)[:, None]
    between = ((class_kernels - class_kernels.mean(0)) ** 2).sum(1).mean()
    return spread, float(between / variance)


def test_each_conv_goes_to_the_router_that_drives_it():
    torch.manual_seed(0)
    model = Model()
    kernels = routed_kernels(model)
    assert list(kernels) == ["block", "block.inner"]
    block = kernels["block"]
    assert [k.experts.shape for k in block] == [(3, 4 * 9), (3, 6 * 4)]
    assert block[0].static is None and block[1].static.shape == (6 * 4,)
    assert block[0].experts.dtype == np.float64
    static = model.block.pointwise.static_weight.detach().flatten().double()
    np.testing.assert_array_equal(block[1].static, static)
    assert [k.experts.shape for k in kernels["block.inner"]] == [(2, 36)]


def test_spread_and_class_share_match_the_kernels_formed_per_image():
    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():
        model.block.pointwise.weight.normal_()  # the static-kernel conv's experts start at zero
    kernels = routed_kernels(model)["block"]
    rng = np.random.default_rng(0)
    weights = rng.uniform(size=(7, 3))
    member = np.zeros((7, 3), dtype=bool)
    member[np.arange(7), [0, 0, 1, 1, 1, 2, 0]] = True
    member[3, 2] = True  # an image of two classes counts for both
    spread = kernel_spread(weights, kernels, member)
    expected = reference(weights, kernels, member)
    assert spread.relative_std == pytest.approx(expected[0], rel=1e-9)
    assert spread.class_share == pytest.approx(expected[1], rel=1e-9)
    assert 0 < spread.class_share < 1


def test_copies_of_one_kernel_do_not_vary_whatever_the_routing():
    experts = np.tile(np.arange(1.0, 7.0), (4, 1))  # 4 identical experts
    weights = np.random.default_rng(1).uniform(size=(9, 4))
    weights /= weights.sum(1, keepdims=True)  # every mix sums to one: the same kernel
    spread = kernel_spread(weights, [(experts, None)])
    assert spread.relative_std == pytest.approx(0, abs=1e-7)
    # Zero experts beside a static kernel: one kernel too, and nothing for the class to explain.
    spread = kernel_spread(weights, [(np.zeros((4, 6)), np.ones(6))], np.ones((9, 1), bool))
    assert spread == (0.0, 0.0)


def test_summary_carries_the_spread_only_when_given_the_kernels():
    torch.manual_seed(0)
    kernels = routed_kernels(Model())
    routing = {"block": np.random.default_rng(2).uniform(size=(4, 3))}
    summary = summarize_routing(routing, [{0}, {0}, {1}, {1}], ["a", "b"], kernels=kernels)
    member = np.eye(2, dtype=bool)[[0, 0, 1, 1]]
    expected = kernel_spread(routing["block"], kernels["block"], member)
    assert summary.kernel_spread == {"block": expected.relative_std}
    assert summary.kernel_class_share == {"block": expected.class_share}
    assert summarize_routing(routing, [{0}, {0}, {1}, {1}], ["a", "b"]).kernel_spread == {}
    with pytest.raises(ValueError, match="3 experts driven by routing over 2"):
        kernel_spread(routing["block"][:, :2], kernels["block"])
