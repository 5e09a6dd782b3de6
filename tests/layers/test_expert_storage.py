"""store_experts_in: experts (and static kernels) stored in bfloat16 or int8 for inference, mixed
into float32 kernels, on every path of the layer; half or a quarter of the bytes; training
refused; TorchScript; what a converted model's state_dict holds, and loading across stores."""

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
from condconv_det.layers.expert_storage import dequantize_per_channel, quantize_per_channel_int8

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


def _rounded_twin(layer, dtype=torch.bfloat16):
    """The float32 layer with its experts rounded to ``dtype``: what a layer storing them so
    must compute with float32 accumulation. int8 by the plain rule, written out here: one
    scale per output channel over all the experts, its largest magnitude to 127."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for p, experts in ((twin.weight, True), (twin.static_weight, False)):
            if p is None:
                continue
            if dtype == torch.bfloat16:
                p.copy_(p.bfloat16().float())
                continue
            for c in range(p.shape[1 if experts else 0]):
                row = p[:, c] if experts else p[c]
                step = row.abs().max() / 127 if row.abs().max() > 0 else torch.tensor(1.0)
                row.copy_(torch.round(row / step).clamp(-127, 127) * step)
    return twin


def _close_to_float32(got, want, dtype=torch.bfloat16):
    """Within the experts' rounding of the output's scale: bfloat16's 8 bits of mantissa, int8's
    127 steps."""
    scale = want.abs().max().item()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("groups_key", list(GROUPS), ids=lambda g: f"groups{g}")
@pytest.mark.parametrize(
    "options",
    [{}, {"static_kernel": True}, {"normalize_kernel": True}, {"bias": False}],
    ids=["plain", "static", "normalized", "nobias"],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
def test_narrow_experts_match_the_float32_layer(path, groups_key, options, dtype):
    layer = _layer(groups_key, path, **options)
    converted = store_experts_in(copy.deepcopy(layer), dtype)
    twin = _rounded_twin(layer, dtype)
    for batch in [1] if path == "single" else [0, 1, 3]:
        x = torch.randn(batch, layer.in_channels, 7, 6)
        routing = torch.rand(batch, 4)
        with torch.no_grad():
            got = converted(x, routing)
            assert got.dtype == torch.float32
            # Float32 accumulation: the only difference is the rounding of the stored experts.
            torch.testing.assert_close(got, twin(x, routing), **EXACT)
            if batch > 0:
                _close_to_float32(got, layer(x, routing), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_cpu_blocks(monkeypatch, native, dtype):
    """The CPU's blocks, forced on a small layer: the experts upcast in blocks of columns (a
    last, shorter one included; under no_grad the native kernel instead where it is built),
    the "matmul" path's blocks of output channels; with and without autograd (the routing's
    gradient is the float32 twin's)."""
    tiny = fast.TUNING._replace(
        split_mix_numel=8, matmul_block_bytes=8 * 4 * 8 * 9, narrow_mix_block_bytes=4 * 4 * 50
    )
    monkeypatch.setattr(fast, "TUNING", tiny)
    layer = _layer(1, "matmul")
    converted = store_experts_in(copy.deepcopy(layer), dtype)
    twin = _rounded_twin(layer, dtype)
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


@pytest.mark.parametrize(
    "name, dtype, ratio", [("bfloat16", torch.bfloat16, 2), ("int8", torch.int8, 4)]
)
def test_experts_are_stored_in_half_or_a_quarter_of_the_bytes(name, dtype, ratio):
    model = _routed_pair(16)
    model[1].add_static_kernel()
    before = {key: p.numel() * p.element_size() for key, p in model.named_parameters()}
    assert store_experts_in(model, name) is model
    for key, p in model.named_parameters():
        nbytes = p.numel() * p.element_size()
        is_expert = key.split(".")[-1] in ("weight", "static_weight") and "router" not in key
        if is_expert:
            assert p.dtype == dtype and nbytes * ratio == before[key], key
        else:  # biases and routers stay float32
            assert p.dtype == torch.float32 and nbytes == before[key], key
    # int8: one float32 scale per output channel, for the experts and for the static kernel.
    scales = {key: b.shape for key, b in model.named_buffers() if key.endswith("_scale")}
    if dtype == torch.int8:
        assert scales == {
            "0.weight_scale": (16,),
            "1.weight_scale": (16,),
            "1.static_weight_scale": (16,),
        }
    else:
        assert scales == {}
    assert all(m.reduced_precision_experts for m in model)
    assert f"experts in {name}" in repr(model[0])
    with torch.no_grad():
        assert model(torch.randn(2, 8, 5, 5)).dtype == torch.float32


def test_int8_scales_one_per_output_channel():
    """Each output channel's largest magnitude over all the experts maps to 127; a channel of
    zeros gets scale 1 and stays zero; dequantized, the experts are within half a step."""
    weight = torch.randn(3, 4, 2, 1, 1)
    weight[:, 2] = 0.0
    weight[1, 1, 0, 0, 0] = 10.0
    q, scales = quantize_per_channel_int8(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scales.shape == (4,)
    torch.testing.assert_close(scales[1], torch.tensor(10.0 / 127))
    assert scales[2] == 1.0 and not q[:, 2].any()
    assert q.abs().amax(dim=(0, 2, 3, 4)).tolist() == [127, 127, 0, 127]
    error = (dequantize_per_channel(q, scales) - weight).abs()
    assert (error <= scales.reshape(1, 4, 1, 1, 1) / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
def test_training_mode_is_refused(dtype):
    layer = _layer(1, "auto", static_kernel=True)
    with pytest.raises(RuntimeError, match="inference only.*eval"):
        store_experts_in(copy.deepcopy(layer).train(), dtype)
    converted = store_experts_in(copy.deepcopy(layer), dtype)
    converted.train()
    with pytest.raises(RuntimeError, match="stored in bfloat16 or int8 for inference"):
        converted(torch.randn(1, 8, 5, 5), torch.rand(1, 4))
    # Back to float32 (the rounding stays): an ordinary layer that trains again, and computes
    # what the converted one did.
    x, routing = torch.randn(2, 8, 5, 5), torch.rand(2, 4)
    with torch.no_grad():
        want = converted.eval()(x, routing)
    store_experts_in(converted, torch.float32)
    assert converted.weight.dtype == torch.float32 and not converted.reduced_precision_experts
    assert converted.weight_scale is None and converted.static_weight_scale is None
    with torch.no_grad():
        torch.testing.assert_close(converted(x, routing), want, **EXACT)
    converted.train()(x, routing).sum().backward()
    assert converted.weight.grad is not None and converted.static_weight.grad is not None


def test_from_one_narrow_store_to_the_other():
    """bfloat16 -> int8 -> bfloat16 goes through float32: each step computes what its
    rounding of the previous experts gives."""
    layer = _layer(1, "auto")
    x, routing = torch.randn(2, 8, 5, 5), torch.rand(2, 4)
    in_bf16 = store_experts_in(copy.deepcopy(layer), torch.bfloat16)
    in_int8 = store_experts_in(copy.deepcopy(in_bf16), torch.int8)
    assert in_int8.weight.dtype == torch.int8
    with torch.no_grad():
        torch.testing.assert_close(
            in_int8(x, routing),
            _rounded_twin(store_experts_in(copy.deepcopy(in_bf16), torch.float32), torch.int8)(
                x, routing
            ),
            **EXACT,
        )
    back = store_experts_in(copy.deepcopy(in_int8), "bfloat16")
    assert back.weight.dtype == torch.bfloat16 and back.weight_scale is None


@pytest.mark.parametrize("dtype", [torch.float16, "half", torch.float64])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        store_experts_in(_layer(1, "auto"), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
def test_torchscript_script_and_trace(dtype):
    model = _routed_pair(12)
    model[1].add_static_kernel()
    torch.nn.init.normal_(model[1].weight, std=0.1)
    model = store_experts_in(model, dtype)
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
    assert dict(loaded.named_parameters())["0.weight"].dtype == dtype
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="stored in bfloat16 or int8 for inference"):
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


def test_state_dict_across_int8_and_float32():
    """An int8 model saves its int8 experts and their scales, and loads them back exactly; a
    float32 checkpoint loaded into an int8 model is quantized as converting does (not cast:
    its values would be truncated to integers); an int8 checkpoint loaded into a float32 or
    bfloat16 model is dequantized; int8 experts without their scales are refused."""
    layer = _layer(1, "auto", static_kernel=True)
    float32_state = copy.deepcopy(layer.state_dict())
    converted = store_experts_in(copy.deepcopy(layer), torch.int8)
    state = copy.deepcopy(converted.state_dict())
    assert state["weight"].dtype == torch.int8 and state["static_weight"].dtype == torch.int8
    assert state["weight_scale"].shape == (6,) and state["static_weight_scale"].shape == (6,)
    x, routing = torch.randn(2, 8, 5, 5), torch.rand(2, 4)
    with torch.no_grad():
        want = converted(x, routing)

    def fresh(dtype):
        torch.manual_seed(1)  # other weights than the saved ones
        return store_experts_in(_layer(1, "auto", static_kernel=True), dtype)

    for source in (state, float32_state):  # int8 into int8, float32 into int8
        reloaded = fresh(torch.int8)
        assert reloaded.load_state_dict(source) is not None
        assert reloaded.weight.dtype == torch.int8
        assert torch.equal(reloaded.weight, converted.weight)
        assert torch.equal(reloaded.weight_scale, converted.weight_scale)
        assert torch.equal(reloaded.static_weight, converted.static_weight)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x, routing), want, rtol=0, atol=0)
    for dtype in (torch.float32, torch.bfloat16):  # int8 into float32 and bfloat16
        reloaded = fresh(dtype)
        reloaded.load_state_dict(state)
        assert reloaded.weight.dtype == dtype and reloaded.weight_scale is None
        twin = fresh(torch.float32)
        twin.load_state_dict(state)
        expected = dequantize_per_channel(converted.weight, converted.weight_scale).to(dtype)
        assert torch.equal(reloaded.weight, expected)
        with torch.no_grad():
            torch.testing.assert_close(twin(x, routing), want, **EXACT)
    without_scales = {k: v for k, v in state.items() if k != "weight_scale"}
    with pytest.raises(RuntimeError, match="weight holds int8 experts without their scales"):
        fresh(torch.float32).load_state_dict(without_scales)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
def test_torch_export_keeps_the_narrow_experts_and_onnx_computes_them(dtype):
    """torch.export (dynamic batch): the program holds the narrow experts (and the int8 scales)
    and computes what the converted model does; so does the dynamo ONNX exporter's graph, run
    with onnxruntime at batch 1 and 3 (ONNX folds the experts' upcast into float32 values)."""
    model = _routed_pair(12)
    model[1].add_static_kernel()
    torch.nn.init.normal_(model[1].weight, std=0.1)
    model = store_experts_in(model, dtype)
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.randn(2, 8, 6, 6),)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    assert program.state_dict["1.static_weight"].dtype == dtype
    assert ("1.static_weight_scale" in program.state_dict) == (dtype == torch.int8)
    inputs = [torch.randn(b, 8, 6, 6) for b in (1, 3)]
    with torch.no_grad():
        wants = [model(x) for x in inputs]
        for x, want in zip(inputs, wants):
            torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)
    for package in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(package)
    import onnxruntime

    onnx_program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=({0: batch},))
    session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString())
    name = session.get_inputs()[0].name
    for x, want in zip(inputs, wants):
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
