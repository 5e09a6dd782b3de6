"""condconv_det.benchmarking.floor: the experts' bytes of tiny models, floors from made-up
numbers, and a read bandwidth that is a positive number."""

import pytest
import torch
from torch import nn

from condconv_det.benchmarking.floor import (
    EVAL_EXPERT_PASSES,
    TRAIN_EXPERT_PASSES,
    expert_bytes,
    floor_seconds,
    read_bandwidth,
)
from condconv_det.layers import CondConv2d, CondConv2dNorm, RoutedCondConv2d

KERNEL_BYTES = 6 * 8 * 3 * 3 * 4  # one 8->6 3x3 float32 kernel


def test_a_static_model_has_no_expert_bytes():
    model = nn.Sequential(nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 4))
    assert expert_bytes(model) == 0


@pytest.mark.parametrize("experts", [1, 3, 8])
def test_experts_are_e_times_a_kernel(experts):
    layer = CondConv2d(8, 6, 3, bias=False, num_experts=experts)
    assert expert_bytes(layer) == experts * KERNEL_BYTES
    # The static conv beside it adds nothing; the expert biases add E x out_channels floats.
    with_bias = nn.Sequential(nn.Conv2d(8, 6, 3), CondConv2d(8, 6, 3, num_experts=experts))
    assert expert_bytes(with_bias) == experts * (KERNEL_BYTES + 6 * 4)


def test_subclasses_nested_layers_and_dtypes_are_counted():
    model = nn.Sequential(
        CondConv2dNorm(8, 6, 3, bias=False, num_experts=2, norm=nn.BatchNorm2d(6)),
        nn.Sequential(RoutedCondConv2d(8, 6, 3, bias=False, num_experts=4)),
        CondConv2d(8, 6, 3, bias=False, num_experts=2, dtype=torch.float64),
    )
    # The router's FC of RoutedCondConv2d is not an expert; float64 takes twice the bytes.
    assert expert_bytes(model) == (2 + 4 + 2 * 2) * KERNEL_BYTES


def test_shared_experts_and_static_kernels_count_once_or_not_at_all():
    layer = CondConv2d(8, 6, 3, bias=False, num_experts=2, static_kernel=True)
    assert layer.static_weight is not None
    twin = CondConv2d(8, 6, 3, bias=False, num_experts=2)
    twin.weight = layer.weight  # tied experts are read once
    assert expert_bytes(nn.Sequential(layer, twin)) == 2 * KERNEL_BYTES


def test_floor_is_static_time_plus_bytes_over_bandwidth():
    assert floor_seconds(0.010, 2e6, 1e9) == pytest.approx(0.012)
    assert floor_seconds(0.010, 0, 1e9) == 0.010  # a static model's floor is its twin's time
    with pytest.raises(ValueError, match="bandwidth"):
        floor_seconds(0.010, 2e6, 0.0)


def test_training_moves_the_experts_seven_times_inference_once():
    # SGD with momentum: read for the mix, gradient written, optimizer 3 reads + 2 writes.
    assert (EVAL_EXPERT_PASSES, TRAIN_EXPERT_PASSES) == (1, 7)


def test_read_bandwidth_is_bytes_per_second():
    bandwidth = read_bandwidth(torch.device("cpu"), min_time=0.0)
    # Any machine reads between 100 MB/s and 100 TB/s.
    assert 1e8 < bandwidth < 1e14
