"""CondConv under torch.autocast (bfloat16 on the CPU): close to float32, routing in float32.

The kernel mix runs in float32 (the weights' dtype) and the mixed kernel is cast for the
convolution; see ``condconv_det.layers._condconv_fast.mix_eager``.
"""

import pytest
import torch
import torch.nn.functional as F

from condconv_det.layers import (
    CONDCONV_PATHS,
    ROUTING_ACTIVATIONS,
    CondConv2d,
    CondConvRouter,
    RoutedCondConv2d,
)

BF16 = torch.bfloat16
PATHS = list(CONDCONV_PATHS)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def _layer(groups: int = 1, kernel: int = 3) -> CondConv2d:
    torch.manual_seed(0)
    channels = 16
    return CondConv2d(
        channels, channels, kernel, padding=kernel // 2, groups=groups, num_experts=4
    ).eval()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("groups,kernel", [(1, 3), (1, 1), (16, 3)], ids=["3x3", "1x1", "dw"])
def test_layer_under_autocast_is_close_to_float32_on_every_path(path, groups, kernel):
    layer = _layer(groups, kernel)
    layer.path = path
    batch = 1 if path == "single" else 3
    x = torch.randn(batch, 16, 9, 9)
    routing = torch.rand(batch, 4)
    want = layer(x, routing)
    with torch.autocast("cpu", dtype=BF16):
        got = layer(x, routing)
    # Every path returns the autocast dtype, as nn.Conv2d does under autocast.
    assert got.dtype == BF16
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9); sums of a few hundred
    # products stay within a percent of the output's range.
    assert _relative_error(got, want) < 1e-2


def test_kernel_is_mixed_in_float32_then_cast():
    layer = _layer()
    layer.path = "single"
    x = torch.randn(1, 16, 9, 9)
    routing = torch.rand(1, 4)
    kernel = torch.einsum("be,eoikl->boikl", routing, layer.weight)[0]  # float32 mix
    bias = (routing @ layer.bias)[0]
    with torch.autocast("cpu", dtype=BF16):
        got = layer(x, routing)
        # What a bfloat16 mix would give instead: each expert rounded before the sum.
        rounded = layer.weight.to(BF16).float()
    want = F.conv2d(x.to(BF16), kernel.to(BF16), bias.to(BF16), padding=1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The test can tell the two apart: the bfloat16 mix gives a different kernel.
    bf16_kernel = torch.einsum("be,eoikl->boikl", routing.to(BF16).float(), rounded)[0]
    assert not torch.equal(bf16_kernel.to(BF16), kernel.to(BF16))


def test_gradients_under_autocast_are_float32_and_close():
    layer = _layer()
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    routing = torch.rand(2, 4, requires_grad=True)
    grad_out = torch.randn(2, 16, 9, 9)
    want = torch.autograd.grad(layer(x, routing), [layer.weight, routing], grad_out)
    with torch.autocast("cpu", dtype=BF16):
        out = layer(x, routing)
    got = torch.autograd.grad(out, [layer.weight, routing], grad_out.to(BF16))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert _relative_error(g, w) < 2e-2


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
@pytest.mark.parametrize("input_dtype", [torch.float32, BF16], ids=["f32in", "bf16in"])
def test_routing_stays_float32_under_autocast(activation, input_dtype):
    torch.manual_seed(0)
    router = CondConvRouter(32, 8, activation=activation)
    x = torch.randn(2, 32, 7, 7)
    want = router(x.to(input_dtype).float())
    with torch.autocast("cpu", dtype=BF16):
        got = router(x.to(input_dtype))
    assert got.dtype == torch.float32
    # The pool accumulates in float32 and the linear layer is not autocast: the same numbers
    # as float32 routing of the same input.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_routed_layer_and_tiny_backbone_under_autocast():
    from condconv_det.modeling.backbone import MobileNet

    torch.manual_seed(0)
    layer = RoutedCondConv2d(8, 16, 3, padding=1, num_experts=4).eval()
    x = torch.randn(2, 8, 12, 12)
    want = layer(x)
    with torch.autocast("cpu", dtype=BF16):
        got = layer(x)
    assert _relative_error(got, want) < 1e-2

    model = MobileNet("tiny_v2", out_features=["res5"]).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(image)["res5"]
        with torch.autocast("cpu", dtype=BF16):
            got = model(image)["res5"]
    assert got.dtype == BF16
    # Rounding compounds through the layers; still within a few percent of the range.
    assert _relative_error(got, want) < 5e-2
