#!/usr/bin/env python
"""Benchmark CondConv2d against the static conv of the same shape and timm's CondConv2d.

For conv shapes of MobileNetV2's last stages and ResNet-50's res4/res5 (224x224 input), at
batch 1 and 8, in eval (forward, no grad) and train (forward + backward) mode, prints:

- ``x static``: CondConv time over the static conv's time (what CondConv costs on top);
- ``x timm``: CondConv time over timm's ``CondConv2d`` (``timm.layers``), the implementation
  in common use, given the same weights (copied into timm's flat ``(E, O*C/g*kh*kw)`` layout),
  the same input and the same routing weights. Its output is checked against ours once per case;
- ``floor``: ``static conv time + B * E * expert bytes / read bandwidth``. Mixing the kernels has
  to read every expert once per example (at batch 1, once); on small maps that read, not the
  convolution, dominates. The bandwidth is measured in the same run.

A summary at the end gives the geometric mean of ``x timm`` over all rows and how many rows meet
the targets: never slower than timm; geometric mean of ``x timm`` <= 0.5; batch-1 eval within
1.2x of the floor; batch > 1 within 1.5x of the floor.

Train steps are forward + backward from a fresh start: gradients are set to None before each
step, as ``optimizer.zero_grad()`` does. All numbers in one table come from one run on one
machine; implementations are timed round-robin so that a busy phase slows all alike. Usage:

    python tools/benchmark_layer.py --markdown      # full table, 8 experts (a few minutes, 2 cores)
    python tools/benchmark_layer.py --quick         # two small shapes, to check it runs
    python tools/benchmark_layer.py --compile       # + torch.compile'd CondConv2d (slow: compiles)
    python tools/benchmark_layer.py --modes eval --inference-mode --channels-last
    python tools/benchmark_layer.py --paths single grouped matmul experts   # time each path too
    python tools/benchmark_layer.py --loop          # + the naive per-example loop
"""

import argparse
import copy
import math
import platform
import sys
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from condconv_det.benchmarking import round_robin_times
from condconv_det.layers import CONDCONV_PATHS, CondConv2d

TARGET_GEOMEAN_X_TIMM = 0.5
TARGET_FLOOR_BATCH1_EVAL = 1.2
TARGET_FLOOR_BATCHED = 1.5


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


def read_bandwidth(device: torch.device, min_time: float) -> float:
    """Bytes per second for reading a buffer far larger than the caches (a reduction over it)."""
    buf = torch.ones(64 * 1024 * 1024, device=device)  # 256 MiB of float32
    seconds = round_robin_times({"read": lambda: buf.sum()}, device, min_time, 3)["read"]
    return buf.numel() * buf.element_size() / seconds


def naive_loop(x, routing, weight, bias, stride, padding, groups):
    """One mixed kernel and one conv per example, as the official TF implementation does."""
    num_experts = weight.shape[0]
    outs = []
    for b in range(x.shape[0]):
        flat = weight.reshape(num_experts, -1)
        kernel = torch.mm(routing[b : b + 1], flat).reshape(weight.shape[1:])
        kernel_bias = torch.mm(routing[b : b + 1], bias)[0]
        outs.append(F.conv2d(x[b : b + 1], kernel, kernel_bias, stride, padding, 1, groups))
    return torch.cat(outs)


def timm_peer(cond: CondConv2d) -> torch.nn.Module:
    """timm's CondConv2d holding ``cond``'s experts, in timm's flat ``(E, O*C/g*kh*kw)`` layout."""
    from timm.layers.cond_conv2d import CondConv2d as TimmCondConv2d

    peer = TimmCondConv2d(
        cond.in_channels,
        cond.out_channels,
        cond.kernel_size,
        cond.stride,
        cond.padding,
        cond.dilation,
        cond.groups,
        bias=cond.bias is not None,
        num_experts=cond.num_experts,
    ).to(device=cond.weight.device)
    with torch.no_grad():
        peer.weight.copy_(cond.weight.reshape(cond.num_experts, -1))
        if cond.bias is not None:
            peer.bias.copy_(cond.bias)
    return peer


class Case(NamedTuple):
    times: Dict[str, float]
    expert_bytes: int


def bench_case(shape: ConvShape, batch: int, train: bool, experts: int, device, args) -> Case:
    """Times the static conv, our CondConv2d, timm's and any extras on one shape and batch."""
    torch.manual_seed(0)
    padding = shape.kernel // 2
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    static = torch.nn.Conv2d(
        shape.in_channels,
        shape.out_channels,
        shape.kernel,
        shape.stride,
        padding,
        groups=shape.groups,
    ).to(device=device, memory_format=memory_format)
    cond = CondConv2d(
        shape.in_channels,
        shape.out_channels,
        shape.kernel,
        shape.stride,
        padding,
        groups=shape.groups,
        num_experts=experts,
    ).to(device)
    peer = timm_peer(cond)
    x = torch.randn(batch, shape.in_channels, shape.size, shape.size, device=device)
    x = x.contiguous(memory_format=memory_format)
    routing = torch.rand(batch, experts, device=device)

    modules: Dict[str, Callable[[], torch.Tensor]] = {
        "static": lambda: static(x),
        "condconv": lambda: cond(x, routing),
        "timm": lambda: peer(x, routing),
    }
    if args.compile:
        compiled = torch.compile(cond)
        modules["compiled"] = lambda: compiled(x, routing)
    for path in args.paths:
        path_layer = copy.deepcopy(cond)
        path_layer.path = path
        modules[f"path:{path}"] = (lambda layer: lambda: layer(x, routing))(path_layer)
    if args.loop:
        modules["loop"] = lambda: naive_loop(
            x, routing, cond.weight, cond.bias, cond.stride, cond.padding, cond.groups
        )

    # Every peer must compute what we compute, or its time means nothing.
    with torch.no_grad():
        want = cond(x, routing)
        for name, fn in modules.items():
            if name != "static":
                torch.testing.assert_close(fn(), want, rtol=1e-3, atol=1e-3, msg=name)

    params = [p for m in (static, cond, peer) for p in m.parameters()]
    if train:
        x.requires_grad_(True)
        routing.requires_grad_(True)
        params += [x, routing]

    def run(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            if train:
                for p in params:
                    p.grad = None
                forward().sum().backward()
            elif args.inference_mode:
                with torch.inference_mode():
                    forward()
            else:
                with torch.no_grad():
                    forward()

        return step

    steps = {k: run(f) for k, f in modules.items()}
    times = round_robin_times(steps, device, args.min_time, args.min_reps, args.stat)
    return Case(times, cond.weight.numel() * cond.weight.element_size())


def geomean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--experts", type=int, nargs="+", default=[8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds timed per measurement")
    parser.add_argument("--min-reps", type=int, default=5)
    parser.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="per-call statistic; min is steadier on a busy shared machine",
    )
    parser.add_argument("--quick", action="store_true", help="two small shapes, fewer repeats")
    parser.add_argument("--shapes", nargs="+", default=None, help="only shapes whose name has one")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile(CondConv2d) (default mode)"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="inputs (and static conv) in channels_last"
    )
    parser.add_argument(
        "--inference-mode",
        action="store_true",
        help="eval rows under torch.inference_mode() instead of torch.no_grad()",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=[],
        choices=[p for p in CONDCONV_PATHS if p != "auto"],
        help="also time CondConv2d forced onto these paths ('single' needs batch 1)",
    )
    parser.add_argument("--loop", action="store_true", help="add the naive per-example loop")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch.cuda.is_available() is False")
    if "single" in args.paths and any(b != 1 for b in args.batches):
        parser.error("--paths single only runs at batch 1: add --batches 1 or drop 'single'")
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [s for s in shapes if any(part in s.name for part in args.shapes)]
        if not shapes:
            parser.error(f"no shape name contains any of {args.shapes}")
    if args.quick:
        args.min_time, args.min_reps = 0.01, 2

    bandwidth = read_bandwidth(device, args.min_time)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = platform.processor() or platform.machine()
    layout = "channels_last" if args.channels_last else "contiguous"
    no_grad = "inference_mode" if args.inference_mode else "no_grad"
    print(
        f"# benchmark_layer: {machine}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, float32, {layout}, eval under {no_grad}, {args.stat} time, read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s"
    )
    header = ["shape", "batch", "mode", "E", "static ms", "condconv ms", "x static"]
    header += ["timm ms", "x timm", "floor ms", "x floor"]
    if args.compile:
        header += ["compiled ms", "compiled x timm"]
    header += [f"{p} ms" for p in args.paths]
    if args.loop:
        header += ["x loop"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(f"{h:>11}" if i else f"{h:<30}" for i, h in enumerate(header)))

    cases = [
        (shape, batch, mode, experts)
        for shape in shapes
        for batch in args.batches
        for mode in args.modes
        for experts in args.experts
    ]
    x_timm: List[float] = []
    floor_rows = {"b1": [0, 0], "batched": [0, 0]}  # [met, total]
    for shape, batch, mode, experts in tqdm(cases, desc="benchmark_layer", file=sys.stderr):
        t, expert_bytes = bench_case(shape, batch, mode == "train", experts, device, args)
        floor = t["static"] + batch * expert_bytes / bandwidth
        ours = t["condconv"]
        x_timm.append(ours / t["timm"])
        if batch == 1 and mode == "eval":
            floor_rows["b1"][0] += ours / floor <= TARGET_FLOOR_BATCH1_EVAL
            floor_rows["b1"][1] += 1
        elif batch > 1:
            floor_rows["batched"][0] += ours / floor <= TARGET_FLOOR_BATCHED
            floor_rows["batched"][1] += 1
        row = [shape.name, str(batch), mode, str(experts), f"{t['static'] * 1e3:.3f}"]
        row += [f"{ours * 1e3:.3f}", f"{ours / t['static']:.2f}", f"{t['timm'] * 1e3:.3f}"]
        row += [f"{ours / t['timm']:.2f}", f"{floor * 1e3:.3f}", f"{ours / floor:.2f}"]
        if args.compile:
            row += [f"{t['compiled'] * 1e3:.3f}", f"{t['compiled'] / t['timm']:.2f}"]
        row += [f"{t[f'path:{p}'] * 1e3:.3f}" for p in args.paths]
        if args.loop:
            row += [f"{ours / t['loop']:.2f}"]
        if args.markdown:
            tqdm.write("| " + " | ".join(row) + " |", file=sys.stdout)
        else:
            line = "  ".join(f"{c:>11}" if i else f"{c:<30}" for i, c in enumerate(row))
            tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    slower = sum(v > 1.0 for v in x_timm)
    print(
        f"# summary: {len(x_timm)} rows; geomean x timm {geomean(x_timm):.2f} "
        f"(target <= {TARGET_GEOMEAN_X_TIMM}); not slower than timm on "
        f"{len(x_timm) - slower}/{len(x_timm)} rows; batch-1 eval within "
        f"{TARGET_FLOOR_BATCH1_EVAL}x of floor on {floor_rows['b1'][0]}/{floor_rows['b1'][1]}; "
        f"batch>1 within {TARGET_FLOOR_BATCHED}x of floor on "
        f"{floor_rows['batched'][0]}/{floor_rows['batched'][1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
