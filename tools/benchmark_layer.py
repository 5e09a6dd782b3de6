#!/usr/bin/env python
"""Benchmark CondConv2d against the static convolution of the same shape and a naive loop.

For conv shapes of MobileNetV2's last stages and ResNet-50's res4/res5 (224x224 input), at
batch 1 and 8, in eval (forward, no grad) and train (forward + backward) mode, prints:

- CondConv time over the static conv's time (what CondConv costs on top);
- CondConv time over a naive per-example loop (mix one kernel, one conv, per example: the
  official TensorFlow implementation's formulation);
- the floor, ``static conv time + E * expert bytes / read bandwidth``: mixing the kernels has
  to read every expert once, and on small maps that read, not the convolution, dominates. The
  bandwidth is measured in the same run. CondConv over the floor is the target at batch 1.

All numbers in one table come from one run on one machine. Usage:

    python tools/benchmark_layer.py                 # full table (a few minutes on 2 cores)
    python tools/benchmark_layer.py --markdown      # the same as a Markdown table
    python tools/benchmark_layer.py --quick         # two small shapes, to check it runs
"""
import argparse
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple

import torch
import torch.nn.functional as F

from condconv_det.layers import CondConv2d


class ConvShape(NamedTuple):
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    size: int  # input height = width


# Shapes at 224x224 input. MobileNetV2: the 14x14 (96 ch) and 7x7 (160/320 ch) stages.
# ResNet-50: res4 (14x14) and res5 (7x7) bottleneck convs.
SHAPES = [
    ConvShape("mbv2 s5 expand 1x1 96->576", 96, 576, 1, 1, 1, 14),
    ConvShape("mbv2 s5 dw 3x3 576", 576, 576, 3, 1, 576, 14),
    ConvShape("mbv2 s6 expand 1x1 160->960", 160, 960, 1, 1, 1, 7),
    ConvShape("mbv2 s6 dw 3x3 960", 960, 960, 3, 1, 960, 7),
    ConvShape("mbv2 s6 project 1x1 960->160", 960, 160, 1, 1, 1, 7),
    ConvShape("mbv2 s7 project 1x1 960->320", 960, 320, 1, 1, 1, 7),
    ConvShape("r50 res4 1x1 1024->256", 1024, 256, 1, 1, 1, 14),
    ConvShape("r50 res4 3x3 256", 256, 256, 3, 1, 1, 14),
    ConvShape("r50 res5 1x1 2048->512", 2048, 512, 1, 1, 1, 7),
    ConvShape("r50 res5 3x3 512", 512, 512, 3, 1, 1, 7),
    ConvShape("r50 res5 1x1 512->2048", 512, 2048, 1, 1, 1, 7),
]
QUICK_SHAPES = [
    ConvShape("quick 3x3 32", 32, 32, 3, 1, 1, 8),
    ConvShape("quick dw 3x3 64", 64, 64, 3, 1, 64, 8),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: Dict[str, Callable[[], object]], device: torch.device, min_time: float, min_reps: int) -> Dict[str, float]:
    """Median seconds per call of each function, after two warm-up calls each.

    The functions are timed round-robin, so that a slow phase of a shared machine slows all of
    them alike and the ratios between them stay fair.
    """
    for fn in fns.values():
        for _ in range(2):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    while min(len(t) for t in times.values()) < min_reps or min(sum(t) for t in times.values()) < min_time:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def read_bandwidth(device: torch.device, min_time: float) -> float:
    """Bytes per second for reading a buffer far larger than the caches (a reduction over it)."""
    buf = torch.ones(64 * 1024 * 1024, device=device)  # 256 MiB of float32
    seconds = measure({"read": lambda: buf.sum()}, device, min_time, 3)["read"]
    return buf.numel() * buf.element_size() / seconds


def naive_loop(x, routing, weight, bias, stride, padding, groups):
    """One mixed kernel and one conv per example, as the official TF implementation does."""
    num_experts = weight.shape[0]
    outs = []
    for b in range(x.shape[0]):
        kernel = torch.mm(routing[b : b + 1], weight.reshape(num_experts, -1)).reshape(weight.shape[1:])
        kernel_bias = torch.mm(routing[b : b + 1], bias)[0]
        outs.append(F.conv2d(x[b : b + 1], kernel, kernel_bias, stride, padding, 1, groups))
    return torch.cat(outs)


def bench_case(shape: ConvShape, batch: int, train: bool, experts: int, device, args):
    torch.manual_seed(0)
    padding = shape.kernel // 2
    static = torch.nn.Conv2d(
        shape.in_channels, shape.out_channels, shape.kernel, shape.stride, padding, groups=shape.groups
    ).to(device)
    cond = CondConv2d(
        shape.in_channels,
        shape.out_channels,
        shape.kernel,
        shape.stride,
        padding,
        groups=shape.groups,
        num_experts=experts,
    ).to(device)
    x = torch.randn(batch, shape.in_channels, shape.size, shape.size, device=device)
    routing = torch.rand(batch, experts, device=device)
    if train:
        x.requires_grad_(True)
        routing.requires_grad_(True)

    def run(forward):
        def step():
            if train:
                forward().sum().backward()
            else:
                with torch.no_grad():
                    forward()

        return step

    timings = {
        "static": run(lambda: static(x)),
        "condconv": run(lambda: cond(x, routing)),
        "loop": run(
            lambda: naive_loop(x, routing, cond.weight, cond.bias, cond.stride, cond.padding, cond.groups)
        ),
    }
    return measure(timings, device, args.min_time, args.min_reps), cond


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds timed per measurement")
    parser.add_argument("--min-reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="two small shapes, fewer repeats")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.min_time, args.min_reps = 0.01, 2

    bandwidth = read_bandwidth(device, args.min_time)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"# benchmark_layer: {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"float32, read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    header = ["shape", "batch", "mode", "E", "static ms", "condconv ms", "x static", "x loop", "floor ms", "x floor"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(f"{h:>11}" if i else f"{h:<30}" for i, h in enumerate(header)))

    total = len(shapes) * len(args.batches) * len(args.modes) * len(args.experts)
    done = 0
    for shape in shapes:
        for batch in args.batches:
            for mode in args.modes:
                for experts in args.experts:
                    t, cond = bench_case(shape, batch, mode == "train", experts, device, args)
                    expert_bytes = cond.weight.numel() * cond.weight.element_size()
                    floor = t["static"] + expert_bytes / bandwidth
                    row = [
                        shape.name,
                        str(batch),
                        mode,
                        str(experts),
                        f"{t['static'] * 1e3:.3f}",
                        f"{t['condconv'] * 1e3:.3f}",
                        f"{t['condconv'] / t['static']:.2f}",
                        f"{t['condconv'] / t['loop']:.2f}",
                        f"{floor * 1e3:.3f}",
                        f"{t['condconv'] / floor:.2f}",
                    ]
                    done += 1
                    if args.markdown:
                        print("| " + " | ".join(row) + " |", flush=True)
                    else:
                        print("  ".join(f"{c:>11}" if i else f"{c:<30}" for i, c in enumerate(row)), flush=True)
                    print(f"[{done}/{total}]", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
