"""The layers' edge cases as nn.Conv2d has them (an empty batch, its argument forms) and clear
errors for arguments and inputs that nn.Conv2d would refuse or that would give a wrong result."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from condconv_det.layers import CONDCONV_PATHS, CondConv2d, CondConvRouter, RoutedCondConv2d

GEOMETRIES = {
    "3x3": dict(kernel_size=3, padding=1),
    "1x1_stride2": dict(kernel_size=1, stride=2, bias=False),
    "grouped": dict(kernel_size=3, padding=1, groups=2),
    "depthwise": dict(kernel_size=3, padding=1, groups=4),
    "same_reflect": dict(kernel_size=4, padding="same", padding_mode="reflect"),
}
OPTIONS = {
    "plain": {},
    "static_kernel": dict(static_kernel=True),
    "normalize_kernel": dict(normalize_kernel=True),
}


def _assert_like_conv2d(out: torch.Tensor, conv: nn.Conv2d, x: torch.Tensor) -> None:
    want = conv(x)
    assert out.shape == want.shape and out.dtype == want.dtype


def _assert_zero_gradients(module: nn.Module, *inputs: torch.Tensor) -> None:
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} has no gradient"
        assert param.grad.shape == param.shape and not param.grad.any(), name
    for tensor in inputs:
        assert tensor.grad is not None and tensor.grad.shape == tensor.shape
        assert not tensor.grad.any()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("path", CONDCONV_PATHS)
def test_empty_batch_like_conv2d(path, geometry, option, training):
    kwargs = GEOMETRIES[geometry]
    cond = CondConv2d(4, 8, num_experts=3, path=path, **kwargs, **OPTIONS[option]).train(training)
    x = torch.randn(0, 4, 7, 6, requires_grad=True)
    routing = torch.rand(0, 3, requires_grad=True)
    out = cond(x, routing)
    _assert_like_conv2d(out, nn.Conv2d(4, 8, **kwargs), x)
    out.sum().backward()
    _assert_zero_gradients(cond, x, routing)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "router_kwargs",
    [
        {},
        dict(routing_activation="softmax", routing_temperature=5.0),
        dict(routing_dropout=0.5),
    ],
    ids=["sigmoid", "softmax", "dropout"],
)
def test_routed_empty_batch_like_conv2d(router_kwargs, training):
    routed = RoutedCondConv2d(4, 6, 3, stride=2, padding=1, num_experts=3, **router_kwargs)
    routed.train(training)
    x = torch.randn(0, 4, 9, 9, requires_grad=True)
    out = routed(x)
    _assert_like_conv2d(out, nn.Conv2d(4, 6, 3, stride=2, padding=1), x)
    out.sum().backward()
    _assert_zero_gradients(routed, x)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(hidden_ratio=0.5, norm="BN"),
        dict(norm="LN", expert_dropout=0.5, dropout=0.5),
        dict(activation="softmax", detach_input=True),
    ],
    ids=["plain", "hidden_bn", "ln_dropouts", "softmax_detached"],
)
def test_router_and_shared_convs_on_an_empty_batch(kwargs, training):
    router = CondConvRouter(4, 3, **kwargs).train(training)
    conv = CondConv2d(4, 6, 3, padding=1, num_experts=3).train(training)
    x = torch.randn(0, 4, 5, 5, requires_grad=True)
    routing = router(x)
    assert routing.shape == (0, 3) and routing.dtype == torch.float32
    out = conv(x, routing)
    assert out.shape == (0, 6, 5, 5)
    out.sum().backward()
    _assert_zero_gradients(conv)
    _assert_zero_gradients(router, x)


def test_traced_and_scripted_layers_run_an_empty_batch():
    cond = CondConv2d(4, 6, 3, padding=1, num_experts=3)
    x, routing = torch.randn(2, 4, 5, 5), torch.rand(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cond, (x, routing))  # the matmul path, any batch size
        scripted = torch.jit.script(cond)
    for module in (traced, scripted):
        assert module(x[:0], routing[:0]).shape == (0, 6, 5, 5)
        torch.testing.assert_close(module(x, routing), cond(x, routing))
    with pytest.raises(torch.jit.Error, match="floating-point routing_weights"):
        scripted(x, torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=np.int64(3), stride=np.int64(2), padding=np.int64(1)),
        dict(kernel_size=(3, np.int32(1)), padding=[np.int64(1), 0], dilation=np.int64(2)),
        dict(kernel_size=3, stride=(2,), padding=(1,), dilation=(1,)),  # one for both sides
        dict(kernel_size=3, padding=1, groups=np.int64(2)),
        dict(kernel_size=torch.Size([3, 3]), padding=[1, 1]),
        dict(kernel_size=np.array([3, 1]), stride=np.array([2]), padding=np.array([1, 0])),
    ],
    ids=["numpy", "numpy_in_pairs", "one_tuples", "numpy_groups", "size_and_list", "arrays"],
)
def test_takes_the_argument_forms_conv2d_takes(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs)
    cond = CondConv2d(np.int64(4), np.int64(6), num_experts=np.int64(1), **kwargs)
    assert type(cond.num_experts) is int and type(cond.in_channels) is int
    assert all(
        type(v) is int for v in cond.kernel_size + cond.stride + cond.padding + cond.dilation
    )
    with torch.no_grad():
        cond.weight.copy_(conv.weight[None])
        cond.bias.copy_(conv.bias[None])
    x = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(cond(x, torch.ones(2, 1)), conv(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cond.expert_conv(0)(x), conv(x))
    assert "CondConv2d(4, 6" in repr(cond)


@pytest.mark.parametrize("cls", [CondConv2d, RoutedCondConv2d])
@pytest.mark.parametrize("num_experts", [np.int64(4), np.int32(4), torch.tensor(4)], ids=str)
def test_num_experts_takes_any_integer(cls, num_experts):
    layer = cls(4, 6, 3, num_experts=num_experts)
    assert type(layer.num_experts) is int and layer.weight.shape[0] == 4
    router = CondConvRouter(np.int64(4), num_experts)
    assert type(router.num_experts) is int and type(router.in_channels) is int
    assert router(torch.randn(2, 4, 3, 3)).shape == (2, 4)


PAIR = "an integer or a pair of integers (height, width)"


@pytest.mark.parametrize("cls", [CondConv2d, RoutedCondConv2d])
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(kernel_size=0), ValueError, f"needs kernel_size >= 1, {PAIR}, got 0"),
        (dict(kernel_size=(3, -1)), ValueError, f"needs kernel_size >= 1, {PAIR}, got (3, -1)"),
        (dict(kernel_size=3.0), TypeError, f"kernel_size >= 1, {PAIR}, got 3.0 of type float"),
        (dict(kernel_size=(3, 2.5)), TypeError, "got (3, 2.5) whose 2.5 is of type float"),
        (dict(kernel_size=True), TypeError, "got True of type bool"),
        (dict(stride=0), ValueError, f"needs stride >= 1, {PAIR}, got 0"),
        (dict(stride=(1, 1, 1)), ValueError, f"needs stride >= 1, {PAIR}, got (1, 1, 1)"),
        (dict(dilation=(1, 0)), ValueError, f"needs dilation >= 1, {PAIR}, got (1, 0)"),
        (dict(padding=-1), ValueError, f"needs padding >= 0, {PAIR}, got -1"),
        (dict(padding=(1, -2)), ValueError, f"needs padding >= 0, {PAIR}, got (1, -2)"),
        (dict(stride=2, padding="same"), ValueError, "(got stride=(2, 2)); give the padding as"),
        (dict(in_channels=0), ValueError, "needs in_channels >= 1, an integer, got 0"),
        (dict(out_channels=-6), ValueError, "needs out_channels >= 1, an integer, got -6"),
        (dict(in_channels=4.0), TypeError, "in_channels >= 1, an integer, got 4.0 of type float"),
        (dict(groups=2.0), TypeError, "needs groups >= 1, an integer, got 2.0 of type float"),
        (dict(groups=4), ValueError, ": out_channels (6) must be divisible by groups (4)"),
        (dict(num_experts=4.0), TypeError, "num_experts >= 1, an integer, got 4.0 of type float"),
        (dict(num_experts=True), TypeError, "num_experts >= 1, an integer, got True of type bool"),
        (dict(num_experts=np.True_), TypeError, "an integer, got True of type bool"),
        (dict(num_experts="8"), TypeError, "an integer, got '8' of type str"),
    ],
)
def test_bad_conv_arguments_are_refused_at_construction(cls, kwargs, error, message):
    with pytest.raises(error) as info:
        cls(**{**dict(in_channels=4, out_channels=6, kernel_size=3), **kwargs})
    assert str(info.value).startswith(cls.__name__) and message in str(info.value)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(in_channels=0), ValueError, "needs in_channels >= 1, an integer, got 0"),
        (dict(num_experts=np.float64(4)), TypeError, "an integer, got 4.0 of type float64"),
        (dict(temperature="2"), TypeError, "temperature must be a real number, got '2' of type"),
        (dict(dropout=None), TypeError, "dropout must be a real number, got None of type"),
        (dict(hidden_ratio=True), TypeError, "hidden_ratio must be a real number, got True of"),
    ],
)
def test_bad_router_arguments_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error) as info:
        CondConvRouter(**{**dict(in_channels=4, num_experts=4), **kwargs})
    assert str(info.value).startswith("CondConvRouter") and message in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool], ids=str)
def test_routing_weights_of_a_non_floating_dtype_are_refused(dtype):
    cond = CondConv2d(4, 6, 3, num_experts=3)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(
        TypeError, match=rf"floating-point routing_weights, got dtype {dtype}; .*\.to\(x\.dtype\)"
    ):
        cond(x, torch.ones(2, 3, dtype=dtype))
    # Floating routing weights of another precision are cast to the weights' dtype.
    routing = torch.rand(2, 3)
    torch.testing.assert_close(cond(x, routing.double()), cond(x, routing))


def test_routing_weights_on_another_device_are_refused():
    cond = CondConv2d(4, 6, 3, num_experts=3)
    with pytest.raises(
        ValueError, match=r"on the input's device \(cpu\), got them on meta; .*\.to\(x\.device\)"
    ):
        cond(torch.randn(2, 4, 5, 5), torch.rand(2, 3, device="meta"))


@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize(
    "kwargs,shape,want",
    [
        (dict(kernel_size=3), (2, 4, 2, 5), r"at least \(H, W\) = \(3, 3\)"),
        (
            dict(kernel_size=3, dilation=(1, 3), padding=1),
            (2, 4, 5, 4),
            r"at least \(H, W\) = \(1, 5\)",
        ),
        (dict(kernel_size=1, padding=1), (2, 4, 0, 5), r"at least \(H, W\) = \(1, 1\)"),
        (
            dict(kernel_size=2, padding="same", padding_mode="replicate"),
            (2, 4, 5, 0),
            r"at least \(H, W\) = \(1, 1\)",
        ),
    ],
)
def test_input_smaller_than_the_kernel_is_one_error_on_every_path(path, kwargs, shape, want):
    cond = CondConv2d(4, 6, num_experts=3, path=path, **kwargs)
    batch = shape[0] if path != "single" else 1
    x = torch.randn((batch,) + shape[1:])
    with pytest.raises(ValueError, match=want + r" .*, got \[" + str(batch)):
        cond(x, torch.rand(batch, 3))


def test_bad_inputs_are_clear_errors():
    cond = CondConv2d(4, 6, 3, num_experts=3)
    x, routing = torch.randn(2, 4, 5, 5), torch.rand(2, 3)
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.int64; .*x.float()"):
        cond(x.long(), routing)
    with pytest.raises(ValueError, match=r"got \[4, 5, 5\]; for one example .* x.unsqueeze\(0\)"):
        cond(x[0], routing[:1])
    with pytest.raises(TypeError, match="expects input to be a torch.Tensor, got ndarray"):
        cond(x.numpy(), routing)
    with pytest.raises(TypeError, match="expects routing_weights to be a torch.Tensor, got list"):
        cond(x, routing.tolist())
    router = CondConvRouter(4, 3)
    with pytest.raises(
        TypeError, match="CondConvRouter expects input to be a torch.Tensor, got ndarray"
    ):
        router(x.numpy())
    # The mean of no pixels would route every example with NaN weights.
    with pytest.raises(
        ValueError,
        match=r"CondConvRouter expects an input of at least one pixel, got shape \[2, 4, 0, 5\]",
    ):
        router(torch.randn(2, 4, 0, 5))
