"""condconv_det.benchmarking.model: channels-last kernels, the twins' timing ratio, a quick
classifier pair measured end to end, the floors and the table's cells (no timing asserted)."""

import pathlib
import time

import pytest
import torch
from torch import nn

from condconv_det.benchmarking.floor import expert_bytes
from condconv_det.benchmarking.model import (
    COLUMNS,
    COMPILED_COLUMNS,
    PAIRS,
    TARGETS,
    WHOLE_COMPILED_COLUMNS,
    CompiledTiming,
    ModelBenchmarkOptions,
    ModelFloors,
    Result,
    Timing,
    benchmark_pair,
    model_floors,
    table_row,
    time_twins,
    to_channels_last,
)
from condconv_det.layers import CondConv2d
from condconv_det.modeling.classifier import build_classifier

MiB = 2**20
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs" / "COCO-Detection"


def test_channels_last_converts_4d_kernels_and_keeps_experts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), CondConv2d(8, 8, 3, num_experts=2))
    to_channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    assert model[1].weight.dim() == 5 and model[1].weight.is_contiguous()


def test_time_twins_ratio_is_condconv_over_static():
    timing = time_twins(
        {"static": lambda: time.sleep(0.01), "condconv": lambda: time.sleep(0.03)},
        torch.device("cpu"),
        reps=3,
        warmup=0,
    )
    assert timing.static >= 0.01 and timing.condconv >= 0.03
    assert 1.5 < timing.ratio < 4.5


def test_benchmark_pair_without_progress_bar():
    # The classifier pair needs no config file.
    options = ModelBenchmarkOptions(configs_dir="", quick=True)
    result = benchmark_pair(PAIRS["efficientnet_b0"], options, torch.device("cpu"))
    assert result.compiled_latency is None and result.whole_compiled is None
    assert result.state["condconv"] > result.state["static"] > 0
    assert result.madds["condconv"] > result.madds["static"] > 0
    # The quick CondConv twin: EfficientNet-B0 at width 0.25 with 2 experts.
    quick_twin = build_classifier("efficientnet_b0", num_experts=2, width_mult=0.25)
    assert result.expert_bytes == expert_bytes(quick_twin) > 0


def _result(**kwargs) -> Result:
    fields = dict(
        latency=Timing(0.010, 0.0115, 1.149),  # shown as 1.15: within the target
        batch8=Timing(0.08, 0.1, 1.25),
        train=Timing(0.1, 0.2, 2.0),
        state={"static": 10 * MiB, "condconv": 30 * MiB},
        step={"static": 10 * MiB, "condconv": 10 * MiB},
        madds={"static": 1e9, "condconv": 1.02e9},
        compiled_latency=None,
        compiled_batch8=None,
        whole_compiled=None,
    )
    fields.update(kwargs)
    return Result(**fields)


def test_table_row_cells_and_verdicts():
    row = dict(zip(COLUMNS, table_row(PAIRS["ssd300_MNv1"], 300, _result())))
    assert len(row) == len(COLUMNS)
    assert row["model"] == "ssd300_MNv1" and row["input"] == "300x300"
    assert row["MAdds x"] == "1.020"
    assert row["b1 ms S / C"] == "10.0 / 11.5"
    assert TARGETS["latency"] == 1.15 and row["b1 x"] == "1.15 (pass)"  # judged as printed
    assert row["b8 img/s S / C"] == "100.00 / 80.00" and row["b8 x"] == "1.25"
    assert row["train x"] == "2.00 (miss)"
    assert row["peak MB S / C"] == "20 / 40" and row["peak x"] == "2.00 (miss)"
    assert row["state MB S / C"] == "10 / 30" and row["step x"] == "1.00"


def test_table_row_compiled_columns():
    result = _result(
        compiled_latency=Timing(0.005, 0.006, 1.2),
        compiled_batch8=Timing(0.04, 0.05, 1.25),
        whole_compiled={
            "static": CompiledTiming(0.02, 0.01, 0.5),
            "condconv": CompiledTiming(0.03, 0.024, 0.8),
        },
    )
    row = table_row(PAIRS["ssd300_MNv1"], 300, result)
    extra = COMPILED_COLUMNS + WHOLE_COMPILED_COLUMNS
    assert len(row) == len(COLUMNS) + len(extra)
    assert dict(zip(extra, row[len(COLUMNS) :])) == {
        "compiled b1 ms S / C": "5.0 / 6.0",
        "compiled b1 x": "1.20",
        "compiled b8 x": "1.25",
        "whole b1 ms S / C": "20.0 / 30.0",
        "whole compiled b1 ms S / C": "10.0 / 24.0",
        "compiled/eager S / C": "0.50 / 0.80",
    }


@pytest.mark.parametrize("name", list(PAIRS))
def test_detector_pairs_name_existing_configs(name):
    for spec in (PAIRS[name].static, PAIRS[name].condconv):
        assert spec.startswith("classifier:") or (CONFIGS / f"{spec}.yaml").is_file()


def test_model_floors_add_the_experts_traffic_to_the_static_times():
    # 1 MB of experts at 1 GB/s: 1 ms per read.
    floors = model_floors(_result(expert_bytes=10**6), bandwidth=1e9)
    assert isinstance(floors, ModelFloors)
    # Inference reads the experts once, at batch 1 as at batch 8; a training step moves them 7x.
    assert (floors.latency, floors.batch8, floors.train) == pytest.approx((0.011, 0.081, 0.107))
    # A static pair (no experts) has floors equal to the static twin's times.
    assert tuple(model_floors(_result(), bandwidth=1e9)) == pytest.approx((0.010, 0.08, 0.1))
    # Experts stored in bfloat16 for inference: half the bytes read at batch 1 and 8; training
    # moves the float32 ones.
    halved = model_floors(_result(expert_bytes=10**6, eval_expert_bytes=5 * 10**5), 1e9)
    assert tuple(halved) == pytest.approx((0.0105, 0.0805, 0.107))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_benchmark_pair_with_narrow_experts_for_inference(dtype):
    options = ModelBenchmarkOptions(configs_dir="", quick=True, expert_dtype=dtype)
    result = benchmark_pair(PAIRS["efficientnet_b0"], options, torch.device("cpu"))
    quick_twin = build_classifier("efficientnet_b0", num_experts=2, width_mult=0.25)
    # The experts' weights (B0's CondConv layers have no biases) halve in bfloat16 and quarter
    # in int8, which adds one float32 scale per output channel of every CondConv layer; the
    # training rows ran the float32 twin.
    assert result.expert_bytes == expert_bytes(quick_twin)
    layers = [m for m in quick_twin.modules() if isinstance(m, CondConv2d)]
    assert layers and all(m.bias is None for m in layers)
    if dtype == "bfloat16":
        assert result.eval_expert_bytes == result.expert_bytes // 2
    else:
        scales = 4 * sum(m.out_channels for m in layers)
        assert result.eval_expert_bytes == result.expert_bytes // 4 + scales
    assert result.train.condconv > 0 and result.state["condconv"] > result.state["static"]


def test_table_row_floor_columns():
    # 2.4 MB of experts at 1 GB/s: floors b1 0.010 + 0.0024 s, b8 0.08 + 0.0024 s, train
    # 0.1 + 7 x 0.0024 s.
    result = _result(expert_bytes=2_400_000)
    row = dict(zip(COLUMNS, table_row(PAIRS["ssd300_MNv1"], 300, result, bandwidth=1e9)))
    assert row["floor b1 x"] == "1.24" and row["b1 x floor"] == "0.93"  # 1.149 / 1.24
    assert row["floor b8 x"] == "1.03" and row["b8 x floor"] == "1.21"  # 1.25 / 1.03
    assert row["floor train x"] == "1.17" and row["train x floor"] == "1.71"  # 2.0 / 1.168
    assert row["b1 x"] == "1.15 (pass)" and row["train x"] == "2.00 (miss)"  # unchanged
    # Without a measured bandwidth the floor cells stay empty.
    row = dict(zip(COLUMNS, table_row(PAIRS["ssd300_MNv1"], 300, result)))
    assert [row[c] for c in COLUMNS if "floor" in c] == ["-"] * 6
