"""condconv_det.benchmarking.timing: round-robin timing, as the benchmarks use it."""

import torch

from condconv_det.benchmarking import paired_times, round_robin_times


def test_round_robin_calls_every_function_alike_after_its_warm_up():
    calls = {"a": [], "b": []}
    order = []

    def make(name):
        def fn():
            calls[name].append(1)
            order.append(name)

        return fn

    times = round_robin_times({"a": make("a"), "b": make("b")}, torch.device("cpu"), 0.0, 5)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert len(calls["a"]) == len(calls["b"]) == 2 + 5  # two warm-up calls each, then 5 rounds
    assert order[4:] == ["a", "b"] * 5  # timed round-robin


def test_paired_times_alternate_the_order_within_rounds():
    order = []
    first, second = (lambda: order.append(1)), (lambda: order.append(2))
    a, b, ratio = paired_times(first, second, torch.device("cpu"), reps=4, warmup=1)
    assert order == [1, 2, 1, 2, 2, 1, 1, 2, 2, 1]  # warm-up, then rounds in alternating order
    assert a > 0 and b > 0 and ratio > 0
