"""condconv_det.benchmarking.mix: the batch-1 mix is timed cold against the read bandwidth, and
its table's cells and summary follow from the times."""

import pytest
import torch

from condconv_det.benchmarking.layer import ConvShape
from condconv_det.benchmarking.mix import (
    TARGET_MIX_BANDWIDTH,
    MixCase,
    bench_mix,
    mix_header,
    mix_row,
    mix_summary,
)


def test_bench_mix_times_ours_and_one_product_on_the_experts_bytes():
    shape = ConvShape("pw 1x1 16->8", 16, 8, 1, 1, 1, 4)
    case = bench_mix(shape, 4, torch.device("cpu"), 0.0, 2, cold_bytes=1 << 16)
    assert set(case.times) == {"read", "ours", "one product"}
    assert all(t > 0 for t in case.times.values())
    assert case.expert_bytes == 4 * 8 * 16 * 4  # E x out x in float32
    assert case.bandwidth("ours") == pytest.approx(case.expert_bytes / case.times["ours"])
    assert case.fraction("ours") == pytest.approx(case.times["read"] / case.times["ours"])


def test_mix_row_follows_the_header():
    shape = ConvShape("s", 8, 8, 3, 1, 1, 6)
    case = MixCase({"read": 1.6e-3, "ours": 2e-3, "one product": 4e-3}, 40_000_000)
    row = mix_row(shape, 8, case)
    assert row == ["s", "8", "40.0", "25.0", "2.000", "0.80", "4.000", "0.40"]
    assert len(row) == len(mix_header())


def test_mix_summary_counts_the_rows_at_the_target():
    read = TARGET_MIX_BANDWIDTH
    fast = MixCase({"read": read, "ours": 1.0, "one product": 2.0}, 100)
    slow = MixCase({"read": read, "ours": 2.0, "one product": 2.0}, 100)
    line = mix_summary([fast, slow])
    assert f">= {TARGET_MIX_BANDWIDTH} of the read bandwidth on 1/2 rows" in line
    assert line.endswith(f"(lowest {TARGET_MIX_BANDWIDTH / 2:.2f})")
