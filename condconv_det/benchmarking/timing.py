"""Calls timed round-robin, so that a slow phase of a shared machine slows every contender alike
and the ratios between them stay fair."""

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

__all__ = ["paired_times", "round_robin_times", "sync"]


def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin_times(
    fns: Dict[str, Callable[[], object]],
    device: torch.device,
    min_time: float,
    min_reps: int,
    stat: str = "median",
) -> Dict[str, float]:
    """Median (or min) seconds per call of each function, after two warm-up calls each.

    The functions are timed round-robin, so that a slow phase of a shared machine slows all of
    them alike and the ratios between them stay fair.
    """
    for fn in fns.values():
        for _ in range(2):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    while (
        min(len(t) for t in times.values()) < min_reps
        or min(sum(t) for t in times.values()) < min_time
    ):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    reduce = min if stat == "min" else statistics.median
    return {name: reduce(t) for name, t in times.items()}


def paired_times(
    first: Callable[[], object],
    second: Callable[[], object],
    device: torch.device,
    reps: int,
    warmup: int = 1,
    budget: float = float("inf"),
) -> Tuple[float, float, float]:
    """Median seconds per call of two functions timed round-robin, and the median over rounds of
    second / first.

    After ``warmup`` calls each, rounds of one timed call each run until ``reps`` rounds are
    done, or at least two are and ``budget`` seconds have passed. The order within a round
    alternates. A slow phase of a shared machine then slows both functions of a round alike,
    and the ratio is taken within each round before the median over rounds.
    """
    fns = [first, second]
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(device)
    times: List[List[float]] = [[], []]
    start = time.perf_counter()
    for i in range(reps):
        if i >= min(2, reps) and time.perf_counter() - start > budget:
            break
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            begin = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - begin)
    ratios = [b / a for a, b in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)
