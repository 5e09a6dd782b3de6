"""condconv_det.benchmarking: round-robin timing and peak memory, as the benchmarks use them."""

import torch

from condconv_det.benchmarking import paired_times, peak_memory, round_robin_times

MiB = 1024 * 1024


def test_peak_memory_of_known_allocations():
    cpu = torch.device("cpu")

    def held():
        a = torch.ones(4 * MiB // 4)  # 4 MiB of float32
        b = torch.ones(2 * MiB // 4)
        return a, b

    def freed_first():
        a = torch.ones(4 * MiB // 4)
        del a
        return torch.ones(2 * MiB // 4)

    assert 6 * MiB <= peak_memory(held, cpu) < 7 * MiB
    # The 4 MiB are freed before the 2 MiB are allocated: the peak is the larger one alone.
    assert 4 * MiB <= peak_memory(freed_first, cpu) < 5 * MiB
    assert peak_memory(lambda: None, cpu) < 64 * 1024


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
