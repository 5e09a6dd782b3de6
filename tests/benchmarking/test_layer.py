"""condconv_det.benchmarking.layer: timm's peer and the naive loop compute what CondConv2d
computes, a case times every implementation asked for, and the table's cells and summary."""

import pytest
import torch

from condconv_det.benchmarking.layer import (
    Case,
    ConvShape,
    LayerBenchmarkOptions,
    TargetSummary,
    bench_case,
    format_row,
    naive_loop,
    table_header,
    table_row,
    timm_peer,
)
from condconv_det.layers import CondConv2d


def test_timm_peer_computes_the_same_as_ours():
    torch.manual_seed(0)
    ours = CondConv2d(8, 6, 3, 2, 1, groups=2, num_experts=3)
    peer = timm_peer(ours)
    x, routing = torch.randn(3, 8, 7, 7), torch.rand(3, 3)
    torch.testing.assert_close(peer(x, routing), ours(x, routing), rtol=1e-5, atol=1e-5)


def test_naive_loop_computes_the_same_as_ours():
    torch.manual_seed(0)
    ours = CondConv2d(8, 6, 3, 2, 1, groups=2, num_experts=3)
    x, routing = torch.randn(3, 8, 7, 7), torch.rand(3, 3)
    loop = naive_loop(x, routing, ours.weight, ours.bias, ours.stride, ours.padding, ours.groups)
    torch.testing.assert_close(loop, ours(x, routing), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_bench_case_times_every_implementation_asked_for(train):
    shape = ConvShape("tiny 3x3 8", 8, 8, 3, 1, 1, 6)
    options = LayerBenchmarkOptions(min_time=0.0, min_reps=1, paths=("matmul",), loop=True)
    case = bench_case(shape, 2, train, 2, torch.device("cpu"), options)
    assert set(case.times) == {"static", "condconv", "timm", "path:matmul", "loop"}
    assert all(t > 0 for t in case.times.values())
    assert case.expert_bytes == 2 * 8 * 8 * 3 * 3 * 4  # E x out x in x kh x kw float32


def _case(static=1e-3, condconv=2e-3, timm=4e-3, **extra) -> Case:
    return Case({"static": static, "condconv": condconv, "timm": timm, **extra}, 1000)


def test_floor_reads_every_expert_once_per_example():
    assert _case().floor(batch=4, bandwidth=1e6) == pytest.approx(1e-3 + 4 * 1000 / 1e6)


def test_table_row_follows_the_header():
    shape = ConvShape("s", 8, 8, 3, 1, 1, 6)
    plain = LayerBenchmarkOptions()
    row = table_row(shape, 1, "eval", 8, _case(), 1e6, plain)
    assert row == [
        "s",
        "1",
        "eval",
        "8",
        "1.000",
        "2.000",
        "2.00",
        "4.000",
        "0.50",
        "2.000",
        "1.00",
    ]
    assert len(row) == len(table_header(plain))

    extras = LayerBenchmarkOptions(compile=True, paths=("grouped",), loop=True)
    case = _case(compiled=3e-3, loop=8e-3, **{"path:grouped": 5e-3})
    header, row = table_header(extras), table_row(shape, 2, "train", 8, case, 1e6, extras)
    assert header[11:] == ["compiled ms", "compiled x timm", "grouped ms", "x loop"]
    assert row[11:] == ["3.000", "0.75", "5.000", "0.25"]


def test_format_row_markdown_and_fixed_widths():
    assert format_row(["a b", "1"], markdown=True) == "| a b | 1 |"
    assert format_row(["a b", "1"], markdown=False) == "a b".ljust(30) + "  " + "1".rjust(11)


def test_target_summary_counts_rows_within_the_floor_targets():
    summary = TargetSummary()
    bandwidth = 1e6  # floor = static + batch ms
    summary.add(1, "eval", _case(static=1e-3, condconv=2.2e-3), bandwidth)  # 1.1x floor: met
    summary.add(1, "train", _case(static=1e-3, condconv=9e-3), bandwidth)  # not a floor row
    summary.add(2, "eval", _case(static=1e-3, condconv=6e-3, timm=3e-3), bandwidth)  # 2x: missed
    assert summary.line() == (
        "# summary: 3 rows; geomean x timm 1.35 (target <= 0.5); not slower than timm on 1/3 "
        "rows; batch-1 eval within 1.2x of floor on 1/1; batch>1 within 1.5x of floor on 0/1"
    )
