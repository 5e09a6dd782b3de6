"""The native bfloat16 kernel mix (condconv_det._C, condconv_det/layers/csrc/mix.cpp): equal to
the product with the experts upcast, for every batch, expert count and column count around its
block size; bad inputs refused by name; taken by the layer's eval mix of bfloat16 experts and
not by a mix with a backward to follow."""

import copy
import os

import pytest
import torch

from condconv_det.layers import CondConv2d, store_experts_in
from condconv_det.layers import _condconv_fast as fast

BUILT = fast._native is not None
needs_native = pytest.mark.skipif(not BUILT, reason="built without the native kernel")


def test_the_native_kernel_is_built_unless_asked_not_to():
    # `make env` builds it (pip install -e .); CONDCONV_DET_NATIVE=0 at install skips it.
    if os.environ.get("CONDCONV_DET_NATIVE") == "0":
        pytest.skip("installed with CONDCONV_DET_NATIVE=0")
    assert BUILT and fast.native_mix_available()


@needs_native
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("experts", [1, 3, 8])
@pytest.mark.parametrize("numel", [1, 1023, 1024, 1025, 4099])
def test_native_mix_equals_the_upcast_product(batch, experts, numel):
    torch.manual_seed(0)
    flat = torch.randn(experts, numel).bfloat16()
    routing = torch.rand(experts, batch).t()  # not contiguous
    got = fast._native.mix_bf16(routing, flat)
    assert got.dtype == torch.float32 and got.shape == (batch, numel)
    torch.testing.assert_close(got, routing @ flat.float(), rtol=1e-5, atol=1e-5)
    # Columns of a wider tensor: the experts need not be contiguous either.
    wide = torch.randn(experts, numel + 7).bfloat16()
    torch.testing.assert_close(
        fast._native.mix_bf16(routing, wide[:, 3 : 3 + numel]),
        routing @ wide[:, 3 : 3 + numel].float(),
        rtol=1e-5,
        atol=1e-5,
    )


@needs_native
def test_bad_inputs_are_refused_by_name():
    routing, flat = torch.rand(1, 4), torch.randn(4, 10).bfloat16()
    with pytest.raises(RuntimeError, match="experts must be bfloat16, got Float"):
        fast._native.mix_bf16(routing, flat.float())
    with pytest.raises(RuntimeError, match="routing must be float32, got BFloat16"):
        fast._native.mix_bf16(routing.bfloat16(), flat)
    with pytest.raises(RuntimeError, match=r"expected routing \(B, E\) and experts \(E, P\)"):
        fast._native.mix_bf16(torch.rand(1, 3), flat)


@needs_native
def test_the_eval_mix_takes_it_and_a_mix_with_a_backward_does_not(monkeypatch):
    calls = []
    real = fast._native

    class Recording:
        @staticmethod
        def mix_bf16(routing, flat):
            calls.append(tuple(flat.shape))
            return real.mix_bf16(routing, flat)

    monkeypatch.setattr(fast, "_native", Recording)
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
