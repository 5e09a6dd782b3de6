"""The native kernel mixes (condconv_det._C, condconv_det/layers/csrc/mix.cpp) of float32,
bfloat16 and int8 experts: equal to the product with the experts upcast, for every batch, expert
count and column count around its block size; bad inputs refused by name; taken by the layer's
inference mix (float32 up to TUNING.native_mix_max_batch examples, bfloat16 at any batch; the
benchmark's int8 mix) and not by a mix with a backward to follow, a traced one, or one off the
CPU."""

import copy
import os

import pytest
import torch

from condconv_det.layers import CondConv2d, CondConvRouter, store_experts_in
from condconv_det.layers import _condconv_fast as fast

BUILT = fast._native is not None
needs_native = pytest.mark.skipif(not BUILT, reason="built without the native kernel")


def test_the_native_kernel_is_built_unless_asked_not_to():
    # `make env` builds it (pip install -e .); CONDCONV_DET_NATIVE=0 at install skips it.
    if os.environ.get("CONDCONV_DET_NATIVE") == "0":
        pytest.skip("installed with CONDCONV_DET_NATIVE=0")
    assert BUILT and fast.native_mix_available()


def narrow_experts(dtype, *shape):
    """Random experts in ``dtype``: bfloat16 rounded from normals, int8 over its whole range."""
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, dtype=torch.int8)
    return torch.randn(*shape).to(dtype)


KERNELS = [(torch.float32, "mix_f32"), (torch.bfloat16, "mix_bf16"), (torch.int8, "mix_int8")]


@needs_native
@pytest.mark.parametrize("dtype, kernel", KERNELS)
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("experts", [0, 1, 3, 8])
@pytest.mark.parametrize("numel", [1, 1023, 1024, 1025, 4099])
def test_native_mix_equals_the_upcast_product(dtype, kernel, batch, experts, numel):
    torch.manual_seed(0)
    mix = getattr(fast._native, kernel)
    # The output is not zero-filled before the mix stores every element: leave NaN in the
    # allocator's freed memory, which the next output may reuse.
    torch.full((batch, numel), float("nan"))
    flat = narrow_experts(dtype, experts, numel)
    routing = torch.rand(experts, batch).t()  # not contiguous
    got = mix(routing, flat)
    assert got.dtype == torch.float32 and got.shape == (batch, numel)
    # int8 values reach 128, 100x the normals: the absolute tolerance scales with them (the two
    # sums round in different orders).
    atol = 1e-5 * (128 if dtype == torch.int8 else 1)
    torch.testing.assert_close(got, routing @ flat.float(), rtol=1e-5, atol=atol)
    # Columns of a wider tensor: the experts need not be contiguous either.
    wide = narrow_experts(dtype, experts, numel + 7)
    torch.testing.assert_close(
        mix(routing, wide[:, 3 : 3 + numel]),
        routing @ wide[:, 3 : 3 + numel].float(),
        rtol=1e-5,
        atol=atol,
    )


@needs_native
@pytest.mark.parametrize("dtype, kernel", KERNELS)
def test_bad_inputs_are_refused_by_name(dtype, kernel):
    mix = getattr(fast._native, kernel)
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}[dtype]
    routing, flat = torch.rand(1, 4), narrow_experts(dtype, 4, 10)
    other = torch.float64 if dtype == torch.float32 else torch.float32
    with pytest.raises(RuntimeError, match=f"{kernel}: experts must be {name}, got "):
        mix(routing, flat.to(other))
    with pytest.raises(RuntimeError, match=f"{kernel}: routing must be float32, got BFloat16"):
        mix(routing.bfloat16(), flat)
    with pytest.raises(RuntimeError, match=r"expected routing \(B, E\) and experts \(E, P\)"):
        mix(torch.rand(1, 3), flat)
    with pytest.raises(RuntimeError, match=f"{kernel}: CPU tensors only"):
        mix(routing.to("meta"), flat)


@needs_native
def test_the_int8_mix_of_the_benchmark_takes_it_unless_switched_off(monkeypatch):
    from condconv_det.benchmarking.mix import mix_int8, quantize_experts_int8

    calls = []
    real = fast._native

    class Recording:
        mix_bf16 = staticmethod(real.mix_bf16)

        @staticmethod
        def mix_int8(routing, flat):
            calls.append(tuple(flat.shape))
            return real.mix_int8(routing, flat)

    monkeypatch.setattr(fast, "_native", Recording)
    torch.manual_seed(0)
    q, scales = quantize_experts_int8(torch.randn(3, 5000))
    routing = torch.rand(1, 3)
    with torch.no_grad():
        native = mix_int8(routing, q, scales)
        assert calls == [(3, 5000)]
        with fast.native_mix(False):
            eager = mix_int8(routing, q, scales)
    assert calls == [(3, 5000)]
    torch.testing.assert_close(native, eager, rtol=1e-5, atol=1e-5)


def test_a_module_built_before_a_kernel_existed_falls_back_to_eager(monkeypatch):
    class Older:  # a condconv_det._C built with the bfloat16 kernel only
        pass

    monkeypatch.setattr(fast, "_native", Older)
    assert fast._native_kernel(torch.int8) is None
    assert fast._native_kernel(torch.float16) is None
    assert fast._native_kernel(torch.float32) is None
    flat, routing = torch.randint(-128, 128, (3, 100), dtype=torch.int8), torch.rand(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(fast.mix_narrow(routing, flat), routing @ flat.float())
        # float32 experts: BLAS's product
        flat = torch.randn(3, 100)
        torch.testing.assert_close(fast._mix_rows(routing, flat), routing @ flat)
    # Without the batch-1 call and the router's (None where absent, as in such a build) a layer
    # and its router take the operators.
    monkeypatch.setattr(fast, "_native_single", getattr(Older, "single_conv2d_f32", None))
    monkeypatch.setattr(fast, "_native_route", getattr(Older, "route_f32", None))
    torch.manual_seed(0)
    router = CondConvRouter(4, 3).eval()
    layer = CondConv2d(4, 6, 3, padding=1, num_experts=3).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        routing = router(x)
        torch.testing.assert_close(routing, router.fc(x.mean((2, 3))).sigmoid())
        kernel = torch.einsum("e,eocij->ocij", routing[0], layer.weight)
        want = torch.nn.functional.conv2d(x, kernel, routing[0] @ layer.bias, padding=1)
        torch.testing.assert_close(layer(x, routing), want, rtol=1e-5, atol=1e-5)


def _recording(monkeypatch, kernel):
    """Replaces the native module with one that has only ``kernel``, which records the shapes of
    the experts it mixes."""
    calls = []
    real = getattr(fast._native, kernel)

    def recording(routing, flat):
        calls.append(tuple(flat.shape))
        return real(routing, flat)

    monkeypatch.setattr(fast, "_native", type("Recording", (), {kernel: staticmethod(recording)}))
    monkeypatch.setattr(fast, "_native_single", None)  # a batch of one mixes through it as well
    return calls


@needs_native
def test_the_eval_mix_takes_it_and_a_mix_with_a_backward_does_not(monkeypatch):
    calls = _recording(monkeypatch, "mix_bf16")
    torch.manual_seed(0)
    layer = CondConv2d(8, 16, 3, padding=1, num_experts=4).eval()
    converted = store_experts_in(copy.deepcopy(layer), torch.bfloat16)
    x, routing = torch.randn(2, 8, 6, 6), torch.rand(2, 4)
    with torch.no_grad():
        out = converted(x, routing)
    assert calls == [(4, 16 * 8 * 9)]
    with fast.native_mix(False), torch.no_grad():
        torch.testing.assert_close(converted(x, routing), out, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1  # switched off: the eager upcast
    # With the routing's gradient to follow, the eager upcast (autograd records it).
    routing.requires_grad_(True)
    converted(x, routing).sum().backward()
    assert len(calls) == 1 and routing.grad is not None


def test_switching_it_off_and_back():
    with fast.native_mix(False):
        assert not fast.native_mix_available()
        with fast.native_mix(True):
            assert fast.native_mix_available() == BUILT
        assert not fast.native_mix_available()
    assert fast.native_mix_available() == BUILT


@needs_native
@pytest.mark.parametrize("batch", [1, 3, 8, 9])
def test_the_float32_inference_mix_takes_it_up_to_its_batch(monkeypatch, batch):
    calls = _recording(monkeypatch, "mix_f32")
    torch.manual_seed(0)
    layer = CondConv2d(8, 16, 3, padding=1, num_experts=4, bias=True).eval()
    x, routing = torch.randn(batch, 8, 6, 6), torch.rand(batch, 4)
    with torch.no_grad():
        out = layer(x, routing)
        with fast.native_mix(False):
            eager = layer(x, routing)
    native = batch <= fast.TUNING.native_mix_max_batch
    assert calls == ([(4, 16 * 8 * 9)] if native else [])
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    reference = torch.cat(
        [
            torch.nn.functional.conv2d(
                x[b : b + 1],
                torch.einsum("e,eocij->ocij", routing[b], layer.weight),
                routing[b] @ layer.bias,
                padding=1,
            )
            for b in range(batch)
        ]
    )
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


@needs_native
def test_the_float32_mix_with_a_backward_traced_or_in_float64_does_not(monkeypatch):
    calls = _recording(monkeypatch, "mix_f32")
    torch.manual_seed(0)
    layer = CondConv2d(8, 16, 1, num_experts=4).eval()
    x, routing = torch.randn(1, 8, 5, 5), torch.rand(1, 4, requires_grad=True)
    layer(x, routing).sum().backward()  # autograd records the product
    assert calls == [] and routing.grad is not None
    with torch.no_grad():
        # A graph records the plain product (check_trace would rerun the module eagerly).
        torch.jit.trace(layer, (x, routing.detach()), check_trace=False)
        layer.double()(x.double(), routing.detach().double())  # float32 only
    assert calls == []
    with torch.no_grad():
        layer.float()(x, routing.detach())
    assert calls == [(4, 16 * 8)]


@needs_native
@pytest.mark.parametrize("dtype, kernel", KERNELS)
def test_native_mix_gives_the_same_bits_at_any_thread_count(dtype, kernel):
    # Each output column is summed by one thread in a fixed order, so an inference result does
    # not depend on how many threads torch runs.
    torch.manual_seed(0)
    mix = getattr(fast._native, kernel)
    flat, routing = narrow_experts(dtype, 8, 3 * 4096 + 77), torch.rand(2, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mix(routing, flat)
        torch.set_num_threads(3)
        three = mix(routing, flat)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


@needs_native
def test_what_works_through_the_dispatcher_gets_the_plain_product(monkeypatch):
    """The kernel reads memory past PyTorch's dispatcher: under vmap, forward-mode AD, fake
    tensors, a dispatch mode or autocast the mix stays PyTorch's, with the right values."""
    from torch.autograd import forward_ad
    from torch.utils.flop_counter import FlopCounterMode

    calls = _recording(monkeypatch, "mix_f32")
    torch.manual_seed(0)
    flat, routing, tangent = torch.randn(4, 300), torch.rand(3, 4), torch.rand(3, 4)
    with torch.no_grad():
        rows = torch.func.vmap(lambda r: fast._mix_rows(r.unsqueeze(0), flat)[0])(routing)
        torch.testing.assert_close(rows, routing @ flat)
        with forward_ad.dual_level():
            dual = fast._mix_rows(forward_ad.make_dual(routing, tangent), flat)
            torch.testing.assert_close(forward_ad.unpack_dual(dual).tangent, tangent @ flat)
        with FlopCounterMode(display=False) as counter:
            fast._mix_rows(routing, flat)
        assert counter.get_total_flops() == 2 * 3 * 4 * 300
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast dtype, as eager
            assert fast.mix_eager(routing, flat, None, False)[0].dtype == torch.bfloat16
            assert fast.mix_eager(routing, flat, None, True)[0].dtype == torch.float32
        assert len(calls) == 1  # only the mix in its own dtype under autocast
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode() as mode:
            fake = fast._mix_rows(mode.from_tensor(routing), mode.from_tensor(flat))
        assert fake.shape == (3, 300)
        assert len(calls) == 1
        fast._mix_rows(routing, flat)  # plain tensors again: the kernel
    assert len(calls) == 2


def test_a_dynamic_batch_exports_without_grad():
    """No test of the batch size on the way to the plain product: torch.export keeps the batch
    dynamic (a guard 'batch <= native_mix_max_batch' would break it)."""
    from condconv_det.layers import RoutedCondConv2d

    torch.manual_seed(0)
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    with torch.no_grad():
        program = torch.export.export(
            layer, (torch.randn(3, 8, 9, 9),), dynamic_shapes=({0: batch},)
        )
        for size in (2, 9, 20):
            x = torch.randn(size, 8, 9, 9)
            torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)


SINGLE_CASES = [
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1, bias=True),
    dict(kernel_size=3, padding=1, stride=2, groups=8),  # depthwise
    dict(kernel_size=3, padding=2, dilation=2, groups=2, bias=True),
]


def _recording_native_call(monkeypatch, name):
    """Records whether each call of the native call ``fast.<name>`` computed the result (True)
    or left it to the operators (False)."""
    calls = []
    native = getattr(fast, name)

    def recording(*args):
        out = native(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(fast, name, recording)
    return calls


def _recording_short_way(monkeypatch):
    """The batch-1 short way's native call (:func:`_recording_native_call`)."""
    return _recording_native_call(monkeypatch, "_native_single")


def _without_short_way(monkeypatch):
    """Every CondConv from here on takes the general way."""
    monkeypatch.setattr(fast, "_native_single", None)
    monkeypatch.setattr(fast, "single_native_conv2d", lambda *args: None)


@needs_native
@pytest.mark.parametrize("kwargs", SINGLE_CASES, ids=["1x1", "3x3-bias", "dw-s2", "g2-dil2"])
@pytest.mark.parametrize("path", ["auto", "single"])
@pytest.mark.parametrize("static_kernel", [False, True], ids=["experts", "static+experts"])
def test_batch_one_inference_takes_the_short_way_to_the_same_bits(
    monkeypatch, kwargs, path, static_kernel
):
    calls = _recording_short_way(monkeypatch)
    torch.manual_seed(0)
    layer = CondConv2d(8, 8, num_experts=4, path=path, **kwargs).eval()
    if static_kernel:
        layer.add_static_kernel()
        with torch.no_grad():
            layer.weight.normal_()  # not the zeros it starts from
    x, routing = torch.randn(1, 8, 9, 9), torch.rand(1, 4)
    with torch.no_grad():
        got = layer(x, routing)
        assert calls == [True]
        # The short way in Python, as a build without the native call takes it.
        monkeypatch.setattr(fast, "_native_single", None)
        python_way = layer(x, routing)
        # The general way: the same operators, so the same bits.
        _without_short_way(monkeypatch)
        want = layer(x, routing)
    assert calls == [True]
    assert torch.equal(got, want) and torch.equal(python_way, want)
    weight, bias = layer.weight, layer.bias
    kernel = torch.einsum("e,eocij->ocij", routing[0], weight)
    if static_kernel:
        kernel = kernel + layer.static_weight
    reference = torch.nn.functional.conv2d(
        x,
        kernel,
        None if bias is None else routing[0] @ bias + (layer.static_bias if static_kernel else 0),
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
    )
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


@needs_native
def test_the_short_way_is_not_taken_where_the_general_one_differs(monkeypatch):
    calls = _recording_short_way(monkeypatch)
    torch.manual_seed(0)
    layer = CondConv2d(8, 8, 3, padding=1, num_experts=4).eval()
    x, routing = torch.randn(1, 8, 9, 9), torch.rand(1, 4)
    layer(x, routing)  # a backward to follow: autograd's product
    with torch.no_grad():
        layer(x.expand(2, -1, -1, -1), routing.expand(2, -1))  # batch 2: not asked
        layer.double()(x.double(), routing.double())  # float64: no native mix
        layer.float()
        layer.path = "grouped"
        layer(x, routing)  # another path: not asked
        layer.path = "auto"
        torch.jit.trace(layer, (x, routing), check_trace=False)  # a graph: the general way
        store_experts_in(layer, torch.bfloat16)(x, routing)  # narrow experts: their own mix
        store_experts_in(layer, torch.float32)
        layer.normalize_kernel = True
        layer(x, routing)  # normalised kernels: not asked
    assert len(calls) >= 3 and not any(calls)


@needs_native
def test_a_bias_of_another_dtype_goes_the_general_way():
    from condconv_det.layers.condconv import cond_conv2d

    torch.manual_seed(0)
    x, routing = torch.randn(1, 4, 5, 5), torch.rand(1, 3)
    weight, bias = torch.randn(3, 6, 4, 3, 3), torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        out = cond_conv2d(x, routing, weight, bias, (1, 1), (1, 1), (1, 1), 1, "auto")
        want = cond_conv2d(x, routing, weight, bias.float(), (1, 1), (1, 1), (1, 1), 1, "grouped")
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@needs_native
def test_what_works_through_the_dispatcher_gets_the_general_way_at_batch_one(monkeypatch):
    """The short way reads the experts past the dispatcher and calls the convolution from C++:
    under vmap, forward-mode AD, fake tensors, a dispatch mode, a torch function mode, autocast,
    a trace or on a negative view it leaves the call to the general way, with the right values
    (and the operators seen)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.autograd import forward_ad
    from torch.overrides import TorchFunctionMode
    from torch.utils.flop_counter import FlopCounterMode

    calls = _recording_short_way(monkeypatch)
    torch.manual_seed(0)
    layer = CondConv2d(4, 6, 3, padding=1, num_experts=3).eval()
    x, routing, tangent = torch.randn(1, 4, 5, 5), torch.rand(1, 3), torch.rand(1, 3)

    def general(run):
        calls.clear()
        out = run()
        assert not any(calls)  # the native call computed nothing (or was not made)
        return out

    class Seen(TorchFunctionMode):
        names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        want = layer(x, routing)
        assert calls == [True]
        xs, rs = torch.randn(2, 1, 4, 5, 5), torch.rand(2, 1, 3)  # vmap: each call a batch of one
        mapped = general(lambda: torch.func.vmap(layer)(xs, rs))
        torch.testing.assert_close(mapped[1], layer(xs[1], rs[1]))
        with forward_ad.dual_level():
            dual = general(lambda: layer(x, forward_ad.make_dual(routing, tangent)))
            assert forward_ad.unpack_dual(dual).tangent is not None
        with FlopCounterMode(display=False) as counter:
            general(lambda: layer(x, routing))
        assert counter.get_total_flops() > 0
        with Seen():
            torch.testing.assert_close(general(lambda: layer(x, routing)), want)
        assert "conv2d" in Seen.names
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the general way's dtype
            assert general(lambda: layer(x, routing)).dtype == torch.bfloat16
        traced = general(lambda: torch.jit.trace(layer, (x, routing), check_trace=False))
        assert "conv" in str(traced.graph)
        negated = torch._neg_view(routing)  # the sign is a flag the data does not carry
        torch.testing.assert_close(general(lambda: layer(x, negated)), layer(x, -routing))
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = general(lambda: layer(mode.from_tensor(x), mode.from_tensor(routing)))
        assert fake.shape == want.shape


@needs_native
@pytest.mark.parametrize(
    "case",
    ["in_channels", "experts", "batch", "routing_batch", "small", "float64", "bias_shape", "grad"],
)
def test_the_native_call_leaves_what_does_not_fit_to_the_general_way(case):
    """``single_conv2d_f32`` checks its arguments and returns None where anything is off, so a
    layer may call it before its own checks and still name the problem."""
    torch.manual_seed(0)
    x, routing = torch.randn(1, 4, 5, 5), torch.rand(1, 3)
    weight, bias = torch.randn(3, 6, 4, 3, 3), torch.randn(3, 6)
    args = dict(x=x, routing=routing, weight=weight, bias=bias)
    changed = {
        "in_channels": dict(x=torch.randn(1, 5, 5, 5)),
        "experts": dict(routing=torch.rand(1, 4)),
        "batch": dict(x=torch.randn(2, 4, 5, 5), routing=torch.rand(2, 3)),
        "routing_batch": dict(routing=torch.rand(2, 3)),
        "small": dict(x=torch.randn(1, 4, 2, 5)),  # a 3x3 kernel, no padding
        "float64": dict(x=x.double()),
        "bias_shape": dict(bias=torch.randn(3, 5)),
        "grad": dict(weight=weight.clone().requires_grad_()),
    }[case]
    args.update(changed)
    native = fast._native_single
    with torch.set_grad_enabled(case == "grad"):
        out = native(
            args["x"], args["routing"], args["weight"], args["bias"], (1, 1), (0, 0), (1, 1), 1
        )
        assert out is None
        fitting = native(x, routing, weight, bias, (1, 1), (0, 0), (1, 1), 1)
    assert fitting is not None and fitting.shape == (1, 6, 3, 3)


@needs_native
def test_bad_input_at_batch_one_is_still_named():
    layer = CondConv2d(4, 6, 3, num_experts=3).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"input of shape \(B, 4, H, W\), got \[1, 5, 5, 5\]"):
            layer(torch.randn(1, 5, 5, 5), torch.rand(1, 3))
        with pytest.raises(
            ValueError, match=r"routing_weights of shape .* = \(1, 3\), got \[1, 4\]"
        ):
            layer(torch.randn(1, 4, 5, 5), torch.rand(1, 4))
        with pytest.raises(ValueError, match=r"at least \(H, W\) = \(3, 3\)"):
            layer(torch.randn(1, 4, 2, 2), torch.rand(1, 3))


ROUTER_CASES = [
    dict(),
    dict(activation="softmax", temperature=3.0),
    dict(hidden_ratio=0.25),
    dict(hidden_ratio=0.25, activation="softmax", temperature=0.5),
    dict(hidden_ratio=0.25, norm="LN"),  # a norm: the operators
    dict(dropout=0.2),
]


@needs_native
@pytest.mark.parametrize("options", ROUTER_CASES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_native_router_routes_as_the_operators_do(monkeypatch, options, batch, channels_last):
    calls = _recording_native_call(monkeypatch, "_native_route")
    torch.manual_seed(0)
    router = CondConvRouter(40, 6, **options)
    torch.nn.init.normal_(router.fc.weight)  # routing that differs by example and expert
    router.eval()
    x = torch.randn(batch, 40, 7, 9) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = router(x)
        with fast.native_mix(False):  # switched off with the native mix
            want = router(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    reference = x.double().mean(dim=(2, 3))
    if router.reduce is not None:
        reference = router.norm.double()(router.reduce.double()(reference)).relu()
    reference = router.fc.double()(reference) / router.temperature
    reference = reference.softmax(1) if router.activation == "softmax" else reference.sigmoid()
    torch.testing.assert_close(got.double(), reference, rtol=1e-6, atol=1e-7)
    # A norm is not the native call's: the operators. Dropout in inference is the identity.
    assert calls == ([] if options.get("norm") else [True])


@needs_native
def test_the_native_router_leaves_training_grad_and_the_dispatcher_to_the_operators(monkeypatch):
    from torch.autograd import forward_ad
    from torch.utils.flop_counter import FlopCounterMode

    calls = _recording_native_call(monkeypatch, "_native_route")
    torch.manual_seed(0)
    router = CondConvRouter(8, 4)
    x = torch.randn(1, 8, 5, 5)
    router(x).sum().backward()  # training
    router.eval()
    router(x).sum().backward()  # a backward to follow
    assert router.fc.weight.grad is not None
    with torch.no_grad():
        router.dropout.train()  # Monte-Carlo dropout: the module's own mode
        router(x)
        router.dropout.eval()
        assert not any(calls)
        with forward_ad.dual_level():
            dual = router(forward_ad.make_dual(x, torch.ones_like(x)))
            assert forward_ad.unpack_dual(dual).tangent is not None
        with FlopCounterMode(display=False) as counter:
            router(x)
        assert counter.get_total_flops() > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(router(x), router.float()(x.float()), rtol=1e-2, atol=1e-2)
        traced = torch.jit.trace(router, (x,), check_trace=False)
        assert "mean" in str(traced.graph)
        torch.testing.assert_close(router(torch._neg_view(x)), router(-x))
        router(x.double())  # float64: the operators
        router.double()(x.double())
        assert sum(calls) == 1  # only router(-x), a plain float32 call
        router.float()
        with pytest.raises(ValueError, match=r"shape \(B, 8, H, W\)"):
            router(torch.randn(1, 7, 5, 5))  # still named
        with pytest.raises(ValueError, match="at least one pixel"):
            router(torch.randn(1, 8, 0, 5))


@needs_native
def test_the_short_way_leaves_other_argument_forms_and_ranks_to_the_general_way():
    from condconv_det.layers.condconv import cond_conv2d

    torch.manual_seed(0)
    x, routing = torch.randn(1, 4, 5, 5), torch.rand(1, 3)
    weight, bias = torch.randn(3, 6, 4, 3, 3), torch.randn(3, 6)
    with torch.no_grad():
        want = cond_conv2d(x, routing, weight, bias, (1, 1), (1, 1), (1, 1), 1, "grouped")
        # Ints and "same", as F.conv2d takes them: not the native call's, the same result.
        for padding in (1, "same"):
            got = cond_conv2d(x, routing, weight, bias, 1, padding, 1, 1, "auto")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        layer = CondConv2d(4, 6, 3, padding=1, num_experts=3).eval()
        with pytest.raises(ValueError, match=r"input of shape \(B, 4, H, W\), got \[\]"):
            layer(torch.tensor(1.0), routing)  # no dimensions: still named


@needs_native
def test_a_router_without_experts_routes_nothing(monkeypatch):
    calls = _recording_native_call(monkeypatch, "_native_route")
    router = CondConvRouter(4, 3, activation="softmax").eval()
    router.fc = torch.nn.Linear(4, 0)
    with torch.no_grad():
        assert router(torch.randn(2, 4, 3, 3)).shape == (2, 0)
    assert calls == [False]


@needs_native
def test_the_native_pool_of_its_largest_map_is_as_exact_as_the_operators(monkeypatch):
    calls = _recording_native_call(monkeypatch, "_native_route")
    torch.manual_seed(0)
    router = CondConvRouter(2, 3).eval()
    torch.nn.init.normal_(router.fc.weight)
    x = torch.rand(1, 2, 256, 512) + 100.0  # long sums (2^17 values) far from zero
    with torch.no_grad():
        got = router(x)
        exact = router.fc.double()(x.double().mean((2, 3))).sigmoid()
        router.float()
        with fast.native_mix(False):
            operators = router(x)
        # One value more: PyTorch's threaded, vectorised pool is the faster there.
        router(torch.rand(1, 2, 256, 513))
    assert calls == [True, False]
    error, operators_error = (got.double() - exact).abs().max(), (operators - exact).abs().max()
    assert error <= max(operators_error, 1e-7)
