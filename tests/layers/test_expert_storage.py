"""store_experts_in: experts (and static kernels) stored in bfloat16 for inference, mixed into
float32 kernels, on every path of the layer; half the bytes; training refused; TorchScript;
what a converted model's state_dict holds."""

import copy
import io

import pytest
import torch

from condconv_det.layers import (
    CONDCONV_PATHS,
    CondConv2d,
    RoutedCondConv2d,
    store_experts_in,
)
from condconv_det.layers import _condconv_fast as fast

# groups -> (in, out, groups); "dw" is depthwise.
GROUPS = {1: (8, 6, 1), 2: (8, 6, 2), "dw": (8, 8, 8)}
# Against the float32 layer with rounded experts: the same sums in float32, up to their order.
EXACT = dict(rtol=1e-5, atol=1e-5)


def _layer(groups_key, path, static_kernel=False, normalize_kernel=False, bias=True):
    torch.manual_seed(0)
    cin, cout, groups = GROUPS[groups_key]
    layer = CondConv2d(
        cin,
        cout,
        3,
        padding=1,
        groups=groups,
        bias=bias,
        num_experts=4,
        path=path,
        static_kernel=static_kernel,
        normalize_kernel=normalize_kernel,
    )
    if static_kernel:  # the experts start at zero beside a static kernel: give them values
        torch.nn.init.normal_(layer.weight, std=0.1)
    return layer.eval()


def _rounded_twin(layer):
    """The float32 layer with its experts rounded to bfloat16: what a bfloat16 layer must
    compute with float32 accumulation."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for p in (twin.weight, twin.static_weight):
            if p is not None:
                p.copy_(p.bfloat16().float())
    return twin


def _close_to_float32(got, want):
    """Within bfloat16's rounding of the experts (8 bits of mantissa) of the output's scale."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("groups_key", list(GROUPS), ids=lambda g: f"groups{g}")
@pytest.mark.parametrize(
    "options",
    [{}, {"static_kernel": True}, {"normalize_kernel": True}, {"bias": False}],
    ids=["plain", "static", "normalized", "nobias"],
)
def test_bfloat16_experts_match_the_float32_layer(path, groups_key, options):
    layer = _layer(groups_key, path, **options)
    converted = store_experts_in(copy.deepcopy(layer), torch.bfloat16)
    twin = _rounded_twin(layer)
    for batch in [1] if path == "single" else [1, 3]:
        x = torch.randn(batch, layer.in_channels, 7, 6)
        routing = torch.rand(batch, 4)
        with torch.no_grad():
            got = converted(x, routing)
            assert got.dtype == torch.float32
            # Float32 accumulation: the only difference is the rounding of the stored experts.
            torch.testing.assert_close(got, twin(x, routing), **EXACT)
            _close_to_float32(got, layer(x, routing))


@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_cpu_blocks(monkeypatch, native):
    """The CPU's blocks, forced on a small layer: the experts upcast in blocks of columns (a
    last, shorter one included; under no_grad the native kernel instead where it is built),
    the "matmul" path's blocks of output channels; with and without autograd (the routing's
    gradient is the float32 twin's)."""
    tiny = fast.TUNING._replace(
        split_mix_numel=8, matmul_block_bytes=8 * 4 * 8 * 9, narrow_mix_block_bytes=4 * 4 * 50
    )
    monkeypatch.setattr(fast, "TUNING", tiny)
    layer = _layer(1, "matmul")
    converted = store_experts_in(copy.deepcopy(layer), torch.bfloat16)
    twin = _rounded_twin(layer)
    for batch in (1, 3):
        x = torch.randn(batch, 8, 7, 6)
        routing = torch.rand(batch, 4, requires_grad=True)
        assert batch == 1 or fast.matmul_blocks(routing, converted.weight, 1) > 1
        with torch.no_grad(), fast.native_mix(native):
            torch.testing.assert_close(converted(x, routing), twin(x, routing), **EXACT)
        got, want = converted(x, routing), twin(x, routing)
        torch.testing.assert_close(got, want, **EXACT)
        grads = [torch.autograd.grad(out.square().sum(), routing)[0] for out in (got, want)]
        torch.testing.assert_close(*grads, **EXACT)


def _routed_pair(channels):
    """A self-routing conv, then a self-routing depthwise conv, in eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        RoutedCondConv2d(8, channels, 3, padding=1, num_experts=4),
        RoutedCondConv2d(channels, channels, 3, padding=1, groups=channels, num_experts=4),
    ).eval()


def test_experts_are_stored_in_half_the_bytes():
    model = _routed_pair(16)
    model[1].add_static_kernel()
    before = {name: p.numel() * p.element_size() for name, p in model.named_parameters()}
    assert store_experts_in(model, "bfloat16") is model
    for name, p in model.named_parameters():
        nbytes = p.numel() * p.element_size()
        is_expert = name.split(".")[-1] in ("weight", "static_weight") and "router" not in name
        if is_expert:
            assert p.dtype == torch.bfloat16 and nbytes * 2 == before[name], name
        else:  # biases and routers stay float32
            assert p.dtype == torch.float32 and nbytes == before[name], name
    assert all(m.reduced_precision_experts for m in model)
    assert "experts in bfloat16" in repr(model[0])
    with torch.no_grad():
        assert model(torch.randn(2, 8, 5, 5)).dtype == torch.float32


def test_training_mode_is_refused():
    layer = _layer(1, "auto")
    with pytest.raises(RuntimeError, match="inference only.*eval"):
        store_experts_in(copy.deepcopy(layer).train(), torch.bfloat16)
    converted = store_experts_in(layer, torch.bfloat16)
    converted.train()
    with pytest.raises(RuntimeError, match="stored in bfloat16 for inference"):
        converted(torch.randn(1, 8, 5, 5), torch.rand(1, 4))
    # Back to float32 (the rounding stays): an ordinary layer that trains again.
    store_experts_in(converted, torch.float32)
    assert converted.weight.dtype == torch.float32 and not converted.reduced_precision_experts
    converted(torch.randn(2, 8, 5, 5), torch.rand(2, 4)).sum().backward()
    assert converted.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, "half", torch.float64])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        store_experts_in(_layer(1, "auto"), dtype)


def test_torchscript_script_and_trace():
    model = store_experts_in(_routed_pair(12), torch.bfloat16)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 8, 6, 6))
        for batch in (1, 3):
            x = torch.randn(batch, 8, 6, 6)
            want = model(x)
            torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert dict(loaded.named_parameters())["0.weight"].dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="stored in bfloat16 for inference"):
        scripted.train()(x)


def test_state_dict_holds_bfloat16_experts():
    """As documented: a converted model saves bfloat16 experts. Loading the float32 checkpoint
    into a converted model rounds it as converting does, and the model stays converted."""
    layer = _layer(1, "auto", static_kernel=True)
    float32_state = copy.deepcopy(layer.state_dict())
    converted = store_experts_in(copy.deepcopy(layer), torch.bfloat16)
    state = converted.state_dict()
    assert (
        state["weight"].dtype == torch.bfloat16 and state["static_weight"].dtype == torch.bfloat16
    )
    reloaded = store_experts_in(_layer(1, "auto", static_kernel=True), torch.bfloat16)
    reloaded.load_state_dict(float32_state)
    assert reloaded.weight.dtype == torch.bfloat16
    assert torch.equal(reloaded.weight, converted.weight)
