"""condconv_det.benchmarking.mix: the batch-1 mix is timed cold against the read bandwidth, and
its table's cells and summary follow from the times."""

import pytest
import torch

from condconv_det.benchmarking.layer import ConvShape
from condconv_det.benchmarking.mix import (
    TARGET_MIX_BANDWIDTH,
    MixCase,
    bench_mix,
    cold_copies,
    mix_header,
    mix_int8,
    mix_row,
    mix_summary,
    quantize_experts_int8,
    reduced_precision_summary,
    round_experts_to_int8,
)
from condconv_det.layers import CondConv2d, store_experts_in


def test_bench_mix_times_ours_and_one_product_on_the_experts_bytes():
    shape = ConvShape("pw 1x1 16->8", 16, 8, 1, 1, 1, 4)
    case = bench_mix(shape, 4, torch.device("cpu"), 0.0, 2, cold_bytes=1 << 16)
    names = {"read", "ours", "column blocks", "one product", "bfloat16", "bfloat16 eager"}
    names |= {"int8", "int8 eager"}
    assert set(case.times) == names
    assert all(t > 0 for t in case.times.values())
    assert case.expert_bytes == 4 * 8 * 16 * 4  # E x out x in float32
    assert case.bandwidth("ours") == pytest.approx(case.expert_bytes / case.times["ours"])
    assert case.fraction("ours") == pytest.approx(case.times["read"] / case.times["ours"])


def test_mix_row_follows_the_header():
    shape = ConvShape("s", 8, 8, 3, 1, 1, 6)
    times = {"read": 1.6e-3, "ours": 2e-3, "one product": 4e-3, "bfloat16": 5e-3, "int8": 1e-3}
    times["bfloat16 eager"], times["int8 eager"], times["column blocks"] = 6e-3, 7e-3, 3.2e-3
    row = mix_row(shape, 8, MixCase(times, 40_000_000))
    assert row[:6] == ["s", "8", "40.0", "25.0", "2.000", "0.80"]
    assert row[6:] == ["3.200", "0.50", "4.000", "0.40"] + [
        "5.000",
        "2.50",
        "6.000",
        "3.00",
        "1.000",
        "0.50",
        "7.000",
        "3.50",
    ]
    assert len(row) == len(mix_header())


def test_mix_summary_counts_the_rows_at_the_target():
    read = TARGET_MIX_BANDWIDTH
    fast = MixCase({"read": read, "ours": 1.0, "one product": 2.0}, 100)
    slow = MixCase({"read": read, "ours": 2.0, "one product": 2.0}, 100)
    line = mix_summary([fast, slow])
    assert f">= {TARGET_MIX_BANDWIDTH} of the read bandwidth on 1/2 rows" in line
    assert line.endswith(f"(lowest {TARGET_MIX_BANDWIDTH / 2:.2f})")


def test_reduced_precision_summary_gives_each_store_s_spread_over_the_float32_mix():
    a = MixCase({"ours": 1.0, "bfloat16": 3.0, "bfloat16 eager": 4.0, "int8": 2.0}, 100)
    b = MixCase({"ours": 2.0, "bfloat16": 5.0, "bfloat16 eager": 4.0, "int8": 1.0}, 100)
    a.times["int8 eager"], b.times["int8 eager"] = 3.0, 3.0
    line = reduced_precision_summary([a, b])
    assert "bfloat16 experts 2.50-3.00x the float32 mix's time (its bytes alone: 0.5)" in line
    assert "bfloat16 eager experts 2.00-4.00x the float32 mix's time" in line
    assert "int8 experts 0.50-2.00x the float32 mix's time (its bytes alone: 0.25)" in line
    assert "int8 eager experts 1.50-3.00x the float32 mix's time (its bytes alone: 0.25)" in line


def test_int8_experts_round_each_expert_to_127_steps_of_its_own_scale():
    torch.manual_seed(0)
    flat = torch.randn(3, 1000) * torch.tensor([[0.01], [1.0], [100.0]])
    flat[1, 7] = -4.0  # the largest magnitude of expert 1: maps to -127
    flat = torch.cat([flat, torch.zeros(1, 1000)])  # an expert of zeros
    q, scales = quantize_experts_int8(flat)
    assert q.dtype == torch.int8 and scales.shape == (4, 1) and scales.dtype == torch.float32
    assert q[1, 7] == -127 and scales[1, 0] == pytest.approx(4.0 / 127)
    assert q.abs().amax(dim=1)[:3].tolist() == [127, 127, 127]
    assert scales[3, 0] == 1.0 and (q[3] == 0).all()
    error = (scales * q.float() - flat).abs()
    # Each value within half a step of its own expert's scale, however small the expert.
    assert (error <= scales / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("numel", [1000, 3 << 20])  # one product, and the upcast in blocks
def test_int8_mix_is_the_float32_mix_of_the_dequantized_experts(numel):
    torch.manual_seed(0)
    flat = torch.randn(4, numel)
    routing = torch.rand(1, 4)
    q, scales = quantize_experts_int8(flat)
    mixed = mix_int8(routing, q, scales)
    assert mixed.dtype == torch.float32 and mixed.shape == (1, numel)
    torch.testing.assert_close(mixed, routing @ (scales * q.float()), rtol=1e-5, atol=1e-5)
    # And close to the float32 experts' mix: each expert off by at most half its step.
    bound = (routing * scales.t()).sum() / 2
    assert (mixed - routing @ flat).abs().max() <= bound * (1 + 1e-4)


def test_round_experts_to_int8_rounds_each_expert_and_the_static_kernel_on_its_own_scale():
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 6, 3)
    layer = CondConv2d(4, 6, 3, num_experts=3)
    residual = CondConv2d(4, 6, 1, num_experts=2, static_kernel=True)
    with torch.no_grad():
        layer.weight[1] *= 100.0  # experts of very different magnitudes
        residual.weight.normal_()
    model = torch.nn.Sequential(plain, layer, residual)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert round_experts_to_int8(model) is model
    after = model.state_dict()
    for key in ("0.weight", "0.bias", "1.bias", "2.bias", "2.static_bias"):
        assert torch.equal(after[key], before[key]), key  # only the kernels of CondConv2d
    for key, rows in (("1.weight", 3), ("2.weight", 2), ("2.static_weight", 1)):
        flat = before[key].reshape(rows, -1)
        q, scales = quantize_experts_int8(flat)
        assert torch.equal(after[key], (scales * q.float()).reshape(before[key].shape)), key
        assert not torch.equal(after[key], before[key])
        # Each expert within half a step of its own scale, the small ones included.
        assert ((after[key].reshape(rows, -1) - flat).abs() <= scales / 2 * (1 + 1e-5)).all()
    # The rounded model is the model that int8 experts would give: its own rounding is a no-op.
    again = {k: v.clone() for k, v in model.state_dict().items()}
    round_experts_to_int8(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, again[key], rtol=0, atol=1e-6)


def test_round_experts_to_int8_per_channel_shares_each_output_channel_s_scale_over_experts():
    torch.manual_seed(0)
    layer = CondConv2d(4, 6, 3, num_experts=3, static_kernel=True)
    with torch.no_grad():
        layer.weight.normal_()
        layer.weight[:, 2] *= 100.0  # one output channel far larger, in every expert
        layer.weight[1, 4] *= 0.01  # one channel small in one expert only
        layer.static_weight.normal_()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    assert round_experts_to_int8(layer, scales="channel") is layer
    weight, static = layer.weight.detach(), layer.static_weight.detach()
    # Each output channel: one step over all the experts, set by its largest magnitude.
    by_channel = before["weight"].transpose(0, 1).reshape(6, -1)
    step = by_channel.abs().amax(dim=1) / 127
    error = (weight - before["weight"]).transpose(0, 1).reshape(6, -1).abs()
    assert (error <= step[:, None] / 2 * (1 + 1e-5)).all()
    q = weight.transpose(0, 1).reshape(6, -1) / step[:, None]
    torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-3)  # whole steps of its channel
    # The small channel of expert 1 shares the others' step: rounded coarsely, unlike "expert".
    assert error.reshape(6, 3, -1)[4, 1].max() > 1e-4
    static_step = before["static_weight"].reshape(6, -1).abs().amax(dim=1) / 127
    static_error = (static - before["static_weight"]).reshape(6, -1).abs()
    assert (static_error <= static_step[:, None] / 2 * (1 + 1e-5)).all()
    # The mix of the rounded experts is the mix of the int8 values, scaled per row afterwards.
    routing = torch.rand(2, 3)
    q8 = q.round().to(torch.int8).reshape(6, 3, -1).transpose(0, 1).reshape(3, -1)
    mixed = (routing @ q8.float()).reshape(2, 6, -1) * step[None, :, None]
    torch.testing.assert_close(mixed.reshape(2, -1), routing @ weight.reshape(3, -1))


def test_round_experts_to_int8_refuses_an_unknown_scale():
    with pytest.raises(ValueError, match=r"scales must be one of \('expert', 'channel'\)"):
        round_experts_to_int8(CondConv2d(4, 4, 1, num_experts=2), scales="tensor")


def test_round_experts_to_int8_refuses_experts_already_stored_narrower():
    layer = store_experts_in(CondConv2d(4, 4, 1, num_experts=2).eval(), torch.bfloat16)
    with pytest.raises(ValueError, match="round_experts_to_int8: weight .* torch.bfloat16"):
        round_experts_to_int8(layer)


def test_every_store_cycles_through_copies_of_at_least_the_cold_bytes():
    # 8.4 MB of float32 experts: 8 copies for 64 MiB; bfloat16 and int8 take 2x and 4x as many.
    mib = 1 << 20
    assert cold_copies(8_400_000, 64 * mib) == 8
    assert cold_copies(4_200_000, 64 * mib) == 16
    assert cold_copies(2_100_000, 64 * mib) == 32
    assert cold_copies(100 * mib, 64 * mib) == 1  # one copy larger than the caches
    assert cold_copies(0, 64 * mib) == 1 and cold_copies(mib, 0) == 1
