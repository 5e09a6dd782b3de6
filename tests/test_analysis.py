"""Parameter and multiply-add counts, against hand counts and the paper's figures."""

import pytest
import torch

from condconv_det.analysis import count_parameters, madds_analysis
from condconv_det.layers import RoutedCondConv2d
from condconv_det.modeling.classifier import build_classifier


@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_condconv_layer_counted_as_routing_plus_mix_plus_conv(batch, bias, kernel_size):
    c, o, k, e, h = 16, 32, kernel_size, 4, 10
    layer = RoutedCondConv2d(c, o, k, padding=k // 2, num_experts=e, bias=bias).eval()
    madds = madds_analysis(layer, (torch.randn(batch, c, h, h),)).total()
    kernel = o * c * k * k
    per_example = c * e + e * kernel + kernel * h * h  # routing FC + kernel mix + conv
    if bias:
        per_example += e * o  # the biases' mix (their addition is element-wise, not counted)
    assert madds == batch * per_example


# Official EfficientNet-CondConv release: params and multiply-adds at 224x224.
@pytest.mark.parametrize(
    "experts,params,madds", [(0, 5.3e6, 391e6), (4, 13.3e6, 402e6), (8, 24.0e6, 413e6)]
)
def test_efficientnet_b0_matches_the_official_figures(experts, params, madds):
    model = build_classifier("efficientnet_b0", num_experts=experts).eval()
    counted = madds_analysis(model, (torch.zeros(1, 3, 224, 224),)).total()
    total = count_parameters(model)["total"]
    assert abs(total / params - 1) < 0.01, total
    assert abs(counted / madds - 1) < 0.02, counted


def test_expert_parameters_are_counted_separately():
    static = count_parameters(build_classifier("mobilenet_v2", num_experts=0))
    condconv = count_parameters(build_classifier("mobilenet_v2", num_experts=8))
    assert static["experts"] == 0
    # Each CondConv layer holds 8 copies of its static kernel; plus one router per block.
    assert condconv["total"] - static["total"] > 7 / 8 * condconv["experts"]
