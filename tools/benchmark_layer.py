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
    python tools/benchmark_layer.py --mix           # the batch-1 kernel mix alone vs bandwidth

``--mix`` times, instead of the layer table, the batch-1 kernel mix alone on the layers with the
largest experts, reading them from memory as inside a network (``condconv_det.benchmarking.mix``):
the mix's read rate as a fraction of a plain reduction's over the same experts, timed with it
round-robin (the read bandwidth), ours and as one matrix product; and the mix of the same experts
stored in bfloat16 and in int8 (one scale per expert), each by the native kernel (where the package
was built with it) and by the eager upcast, as a multiple of the float32 mix's time.
"""

import argparse
import platform
import sys
from typing import List, Optional

import torch
from tqdm import tqdm

from condconv_det.benchmarking.floor import read_bandwidth
from condconv_det.benchmarking.layer import (
    QUICK_SHAPES,
    SHAPES,
    LayerBenchmarkOptions,
    TargetSummary,
    bench_case,
    format_row,
    table_header,
    table_row,
)
from condconv_det.benchmarking.mix import (
    MIX_SHAPES,
    QUICK_MIX_SHAPES,
    bench_mix,
    mix_header,
    mix_row,
    mix_summary,
    reduced_precision_summary,
)
from condconv_det.benchmarking.table import markdown_header
from condconv_det.layers import CONDCONV_PATHS


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
    parser.add_argument(
        "--mix",
        action="store_true",
        help="instead of the layer table: the batch-1 kernel mix alone against the read bandwidth",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch.cuda.is_available() is False")
    if "single" in args.paths and any(b != 1 for b in args.batches):
        parser.error("--paths single only runs at batch 1: add --batches 1 or drop 'single'")
    torch.set_num_threads(args.threads)
    if args.mix:
        shapes = QUICK_MIX_SHAPES if args.quick else MIX_SHAPES
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [s for s in shapes if any(part in s.name for part in args.shapes)]
        if not shapes:
            parser.error(f"no shape name contains any of {args.shapes}")
    # --quick: two small shapes, fewer repeats.
    min_time, min_reps = (0.01, 2) if args.quick else (args.min_time, args.min_reps)
    options = LayerBenchmarkOptions(
        min_time=min_time,
        min_reps=min_reps,
        stat=args.stat,
        channels_last=args.channels_last,
        inference_mode=args.inference_mode,
        compile=args.compile,
        paths=tuple(args.paths),
        loop=args.loop,
    )

    bandwidth = read_bandwidth(device, options.min_time)
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
    if args.mix:
        return _mix_table(shapes, args.experts, device, options, args.markdown)
    header = table_header(options)
    print("\n".join(markdown_header(header)) if args.markdown else format_row(header, False))

    cases = [
        (shape, batch, mode, experts)
        for shape in shapes
        for batch in args.batches
        for mode in args.modes
        for experts in args.experts
    ]
    summary = TargetSummary()
    for shape, batch, mode, experts in tqdm(cases, desc="benchmark_layer", file=sys.stderr):
        case = bench_case(shape, batch, mode == "train", experts, device, options)
        summary.add(batch, mode, case, bandwidth)
        row = table_row(shape, batch, mode, experts, case, bandwidth, options)
        tqdm.write(format_row(row, args.markdown), file=sys.stdout)
        sys.stdout.flush()
    print(summary.line())
    return 0


def _mix_table(shapes, experts_list, device, options, markdown) -> int:
    header = mix_header()
    print("\n".join(markdown_header(header)) if markdown else format_row(header, False))
    cases = []
    todo = [(shape, experts) for shape in shapes for experts in experts_list]
    for shape, experts in tqdm(todo, desc="benchmark_layer --mix", file=sys.stderr):
        case = bench_mix(shape, experts, device, options.min_time, options.min_reps, options.stat)
        cases.append(case)
        tqdm.write(format_row(mix_row(shape, experts, case), markdown), file=sys.stdout)
        sys.stdout.flush()
    print(mix_summary(cases))
    print(reduced_precision_summary(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
