"""Every CondConv2d path equals a per-example loop over F.conv2d, in values and gradients."""

import itertools

import pytest
import torch

from condconv_det.layers import CONDCONV_PATHS, CondConv2d, cond_conv2d
from condconv_det.layers import _condconv_fast as fast
from tests.layers.reference import condconv_reference

IN_CHANNELS = 4
# groups -> (groups, out_channels); "dw" is depthwise with a channel multiplier of 1.
GROUPS = {1: (1, 6), 2: (2, 6), "dw": (IN_CHANNELS, IN_CHANNELS)}
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


def _case(kernel, stride, dilation, groups_key, bias, batch, experts, dtype, seed=0):
    groups, out_channels = GROUPS[groups_key]
    torch.manual_seed(seed)
    layer = CondConv2d(
        IN_CHANNELS,
        out_channels,
        kernel,
        stride=stride,
        padding=dilation * (kernel // 2),
        dilation=dilation,
        groups=groups,
        bias=bias,
        num_experts=experts,
    ).to(dtype)
    if bias:  # the default init is tiny; make the bias visible in the comparison
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(batch, IN_CHANNELS, 9, 8, dtype=dtype, requires_grad=True)
    routing = torch.rand(batch, experts, dtype=dtype, requires_grad=True)
    return layer, x, routing


def _grads(out, tensors):
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad(out, tensors, grad_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("groups_key", list(GROUPS), ids=lambda g: f"groups{g}")
@pytest.mark.parametrize("dilation", [1, 2], ids=lambda d: f"dil{d}")
@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("kernel", [1, 3, 5], ids=lambda k: f"k{k}")
def test_paths_match_per_example_loop(kernel, stride, dilation, groups_key, bias, path, dtype):
    batches = [1] if path == "single" else [1, 3]
    for batch, experts in itertools.product(batches, [1, 4, 8]):
        layer, x, routing = _case(kernel, stride, dilation, groups_key, bias, batch, experts, dtype)
        layer.path = path
        out = layer(x, routing)
        ref = condconv_reference(
            x,
            routing,
            layer.weight,
            layer.bias,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
        where = f"batch={batch} experts={experts}"
        assert out.shape == ref.shape, where
        torch.testing.assert_close(out, ref, **TOLERANCE[dtype], msg=lambda m: f"{where}: {m}")

        params = [x, routing, layer.weight] + ([layer.bias] if bias else [])
        for name, got, want in zip(
            ["x", "routing", "weight", "bias"], _grads(out, params), _grads(ref, params)
        ):
            torch.testing.assert_close(
                got, want, **TOLERANCE[dtype], msg=lambda m: f"{where} grad {name}: {m}"
            )


@pytest.mark.parametrize("path", [p for p in CONDCONV_PATHS if p != "auto"])
@pytest.mark.parametrize("kernel,groups_key", [(3, 1), (1, 2), (3, "dw")])
def test_gradcheck(path, kernel, groups_key):
    batch = 1 if path == "single" else 2
    layer, x, routing = _case(kernel, 2, 1, groups_key, True, batch, 3, torch.float64)
    layer.path = path
    x = x[..., :5, :5].detach().requires_grad_(True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)

    def fn(x, routing, weight, bias):
        return cond_conv2d(
            x,
            routing,
            weight,
            bias,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            path,
        )

    inputs = (x, routing, weight, bias)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("path", ["auto", "grouped", "matmul", "experts"])
@pytest.mark.parametrize("kernel,groups_key", [(3, 1), (1, 1), (3, "dw")])
def test_channels_last_input(path, kernel, groups_key):
    layer, x, routing = _case(kernel, 1, 1, groups_key, True, 3, 4, torch.float32)
    layer.path = path
    want = layer(x, routing)
    got = layer(x.contiguous(memory_format=torch.channels_last), routing)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


def test_paths_agree_in_train_and_eval_mode():
    layer, x, routing = _case(3, 1, 1, 1, True, 3, 4, torch.float32)
    outs = []
    for mode in (True, False):
        layer.train(mode)
        for path in ("grouped", "matmul"):
            layer.path = path
            outs.append(layer(x, routing))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("kernel,groups", [(3, 1), (1, 1), (3, 8)], ids=["3x3", "1x1", "dw"])
def test_split_batch1_mix_matches_reference(monkeypatch, kernel, groups):
    """Large batch-1 mixes run as column blocks with their own backward; force it on a small one."""
    monkeypatch.setattr(fast, "TUNING", fast.TUNING._replace(split_mix_numel=8))
    calls = []
    split = fast._mix_split
    monkeypatch.setattr(fast, "_mix_split", lambda *a: calls.append(1) or split(*a))
    torch.manual_seed(0)
    layer = CondConv2d(8, 8, kernel, padding=kernel // 2, groups=groups, num_experts=3).double()
    numel = layer.weight[0].numel()
    assert numel >= fast.TUNING.split_mix_numel and numel % fast.TUNING.split_mix_chunks == 0
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    routing = torch.rand(1, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x, routing)
    assert len(calls) == 1, "the split mix was not used"
    ref = condconv_reference(
        x, routing, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, groups
    )
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64])
    params = [x, routing, layer.weight, layer.bias]
    for got, want in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])
    # Only one of the two inputs needing a gradient, and gradcheck through the custom backward.
    (grad_w,) = torch.autograd.grad(layer(x.detach(), routing.detach()).sum(), [layer.weight])
    ref = condconv_reference(
        x.detach(),
        routing.detach(),
        layer.weight,
        None,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups,
    )
    torch.testing.assert_close(grad_w, torch.autograd.grad(ref.sum(), [layer.weight])[0])
    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda r, w: cond_conv2d(
            x.detach(), r, w, None, layer.stride, layer.padding, layer.dilation, groups, "single"
        ),
        (routing, weight),
    )
    with torch.no_grad():  # the forward without autograd takes the same split
        torch.testing.assert_close(layer(x, routing), out, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 2)], ids=["1x1", "3x3s2"])
def test_blocked_matmul_matches_reference(monkeypatch, kernel, stride, bias):
    """Large batched kernels are mixed and applied in blocks of output channels; force blocks."""
    block_bytes = 3 * 4 * 8 * 4 * kernel * kernel
    monkeypatch.setattr(fast, "TUNING", fast.TUNING._replace(matmul_block_bytes=block_bytes))
    torch.manual_seed(0)
    layer = CondConv2d(8, 7, kernel, stride, kernel // 2, bias=bias, num_experts=3, path="matmul")
    layer = layer.double()
    x = torch.randn(3, 8, 6, 5, dtype=torch.float64, requires_grad=True)
    routing = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    assert fast.matmul_blocks(routing, layer.weight, 1) == 4  # 7 channels in blocks of 2
    out = layer(x, routing)
    ref = condconv_reference(
        x, routing, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, 1
    )
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64])
    params = [x, routing, layer.weight] + ([layer.bias] if bias else [])
    for got, want in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])


@pytest.mark.parametrize(
    "batch,kernel,groups,out_channels,size,want",
    [
        (1, 3, 1, 64, 7, "single"),
        (8, 1, 1, 64, 14, "matmul"),
        (8, 3, 1, 256, 7, "matmul"),  # 256 output channels >= 4 x 7 x 7 output pixels
        (8, 3, 1, 64, 7, "grouped"),  # 64 < 4 x 49
        (8, 3, 1, 256, 14, "grouped"),
        (8, 3, 16, 16, 7, "grouped"),  # depthwise
    ],
)
def test_auto_path_choice(batch, kernel, groups, out_channels, size, want):
    weight = torch.zeros(2, out_channels, 16 // groups, kernel, kernel)
    x = torch.zeros(batch, 16, size, size)
    pad = (kernel // 2, kernel // 2)
    assert fast.auto_path(x, weight, (1, 1), pad, (1, 1)) == want
    # Off the CPU, where the k x k threshold was not measured: the batched product for 1x1
    # kernels (measured on a GPU), else the grouped conv.
    meta = "single" if batch == 1 else "matmul" if kernel == 1 and groups == 1 else "grouped"
    assert fast.auto_path(x.to("meta"), weight.to("meta"), (1, 1), pad, (1, 1)) == meta


def test_fast_mixes_stay_on_the_cpu(monkeypatch):
    """Off the CPU the kernel mix is one product and the matmul path takes no blocks, however
    low the thresholds (checked on the 'meta' device)."""
    tiny = fast.TUNING._replace(split_mix_numel=8, matmul_block_bytes=8)
    monkeypatch.setattr(fast, "TUNING", tiny)
    calls = []
    split = fast._mix_split
    monkeypatch.setattr(fast, "_mix_split", lambda *a: calls.append(1) or split(*a))
    for device, want_splits, want_blocks in (("cpu", 1, 8), ("meta", 0, 1)):
        calls.clear()
        weight = torch.randn(3, 8, 8, 3, 3, device=device)
        routing = torch.rand(1, 3, device=device)
        # Without the native kernel (which takes the CPU's float32 inference mix where built).
        with torch.no_grad(), fast.native_mix(False):
            mixed = fast._mix_rows(routing, weight.reshape(3, -1))
        assert mixed.shape == (1, 8 * 8 * 3 * 3) and len(calls) == want_splits, device
        assert fast.matmul_blocks(routing.expand(4, 3), weight, 1) == want_blocks, device
