#!/usr/bin/env python
"""Benchmark CondConv models against their static twins: what CondConv costs in wall-clock time.

For each static/CondConv pair (the COCO configs' detectors and the EfficientNet-B0 classifier),
built with random weights and measured in one run on one machine:

- batch-1 inference latency (eval, no grad; median over repeats);
- batch-8 inference throughput (images per second);
  for detectors both time the network, from normalising the images to the head's predictions:
  with random weights, box decoding and NMS cost what no trained model would (``--with-postprocess``
  times them too);
- one training step at a small batch (forward, backward, SGD step; random images, random ground
  truth boxes for the detectors, random labels for the classifier);
- the peak memory of that training step;
- multiply-adds at batch 1 (fvcore, counted as the paper does; see condconv_det/analysis.py);
- with ``--compile-detector``: the whole model (a detector with pre-processing, decoding and NMS;
  the classifier) ``torch.compile``'d against eager at batch 1, for each twin; compiled / eager
  below 1 means compiling pays. Dynamo compiles the tensor code between detectron2's Python
  structures and data-dependent steps (score threshold, NMS) and runs those in Python.

Every ratio printed is CondConv's cost over the static twin's (time, bytes or multiply-adds), so
1.10 means CondConv costs 10% more; for throughput that is static images/s over CondConv's. The
twins are timed round-robin and each time ratio is the median of the per-round ratios, so a slow
phase of a shared machine slows both twins of a round alike.

Floors: beside each time ratio, ``floor <t> x`` is the least the CondConv twin can take over the
static twin on this machine and ``<t> x floor`` the CondConv twin's time over that floor, which
hardly depends on the host. A floor is the static twin's time plus the bytes of the CondConv
twin's experts moved beyond it, over the read bandwidth measured once at the start of the run:
inference reads the experts once per call at any batch size; a training step (SGD with momentum)
moves them 7 times (forward read, gradient write, the optimizer's 3 reads and 2 writes).

Input sizes: SSD300 300x300 and SSDLite320 320x320 (their configs' fixed squares), the classifier
224x224, RetinaNet 512x512 (a fixed square instead of the config's 800-pixel short side, which
would take the full run far past ten minutes on two cores; CondConv's extra cost, mixing the
kernels, is per image while the network's is per pixel, so the smaller input is the stricter
test).

Peak memory of a training step = state + step. State: the bytes of the parameters and the
optimizer's buffers, live when the step starts (the gradients are freed by
``zero_grad(set_to_none=True)`` at the start of each step). Step: the most allocated above that
during the step (activations, gradients, temporaries). On the CPU, torch.profiler with
``profile_memory=True`` records every allocation and free of PyTorch's CPU allocator; their
running sum in time order, at its maximum, is the step part (memory that oneDNN or other
libraries allocate by themselves is not seen). On CUDA, ``torch.cuda.max_memory_allocated``
over the step minus ``memory_allocated`` before it.

    python tools/benchmark_model.py                      # all pairs, CPU, 2 threads
    python tools/benchmark_model.py --markdown           # the table of docs/performance.md
    python tools/benchmark_model.py --models ssd300_MNv1 efficientnet_b0 --compile
    python tools/benchmark_model.py --models ssd300_MNv1 --compile-detector
    python tools/benchmark_model.py --quick              # tiny models, one repeat: checks it runs
    python tools/benchmark_model.py --profile ssd300_MNv1  # top ops, static vs CondConv
    python tools/benchmark_model.py --models efficientnet_b0 --eager-mix  # without the native mix
"""

import argparse
import logging
import os
import sys
import time
import warnings

import torch

from condconv_det.benchmarking.floor import (
    EVAL_EXPERT_PASSES,
    TRAIN_EXPERT_PASSES,
    read_bandwidth,
)
from condconv_det.benchmarking.model import (
    COLUMNS,
    COMPILED_COLUMNS,
    PAIRS,
    PROGRESS_STEPS,
    QUICK_SIZE,
    TARGETS,
    WHOLE_COMPILED_COLUMNS,
    ModelBenchmarkOptions,
    benchmark_pair,
    machine_name,
    profile_pair,
    table_row,
)
from condconv_det.benchmarking.table import format_table
from condconv_det.layers import EXPERT_DTYPES
from condconv_det.layers._condconv_fast import native_mix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "COCO-Detection")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=list(PAIRS), metavar="PAIR", help=f"any of {list(PAIRS)}"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--reps",
        type=int,
        default=15,
        help="batch-1 rounds (default 15); a fifth, at least 3, at batch 8 and in training",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=90.0,
        help="seconds after which a measurement stops at 2 rounds (default 90)",
    )
    parser.add_argument(
        "--train-batch", type=int, default=2, help="images per training step (default 2)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd inference"
    )
    parser.add_argument(
        "--compile-detector",
        action="store_true",
        help="also time each twin's whole model (a detector with pre- and post-processing) "
        "torch.compile'd against eager, at batch 1",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of --compile and --compile-detector (default inductor; "
        "aot_eager captures the graphs without generating code)",
    )
    parser.add_argument(
        "--inference-mode", action="store_true", help="torch.inference_mode instead of no_grad"
    )
    parser.add_argument(
        "--expert-dtype",
        default="float32",
        choices=list(EXPERT_DTYPES),
        help="the CondConv twin's experts stored in this dtype for batch-1 and batch-8 inference "
        "(and their floors); training rows train float32 experts (default float32)",
    )
    parser.add_argument(
        "--eager-mix",
        action="store_true",
        help="mix float32 experts with PyTorch's product, not the native kernel (as a build "
        "without it): what the kernel gains",
    )
    parser.add_argument(
        "--with-postprocess", action="store_true", help="time detectors with box decoding and NMS"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last activations and kernels"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny models at {QUICK_SIZE}x{QUICK_SIZE}, one repeat"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--profile",
        nargs="+",
        default=None,
        metavar="PAIR",
        help="instead of the table, top ops of these pairs",
    )
    args = parser.parse_args(argv)
    for name in args.models + (args.profile or []):
        if name not in PAIRS:
            parser.error(f"unknown model pair {name!r}; choose from {list(PAIRS)}")
    if args.threads < 1 or args.reps < 1 or args.train_batch < 1:
        parser.error("--threads, --reps and --train-batch must be at least 1")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device takes cpu or cuda, got {args.device!r}")
    backends = torch._dynamo.list_backends(exclude_tags=())
    if args.compile_backend not in backends:
        parser.error(f"unknown --compile-backend {args.compile_backend!r}; choose from {backends}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            "--device cuda was given but torch.cuda.is_available() is False: run on the CPU"
        )
    return args


def run(args) -> None:
    from tqdm import tqdm

    import condconv_det  # noqa: F401  (registers the backbones and meta-architectures)

    device = torch.device(args.device)
    options = ModelBenchmarkOptions(
        configs_dir=CONFIGS,
        quick=args.quick,
        reps=args.reps,
        budget=args.budget,
        train_batch=args.train_batch,
        inference_mode=args.inference_mode,
        with_postprocess=args.with_postprocess,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_detector=args.compile_detector,
        compile_backend=args.compile_backend,
        expert_dtype=args.expert_dtype,
    )
    if args.profile:
        for name in args.profile:
            for title, table in profile_pair(PAIRS[name], options, device):
                print(f"\n## {title}\n")
                print(table)
        return

    start = time.perf_counter()
    pairs = [PAIRS[name] for name in args.models]
    # Once per run, before any model is built: the floors of every pair divide by it.
    bandwidth = read_bandwidth(device, 0.05 if args.quick else 1.0)
    mode = "inference_mode" if args.inference_mode else "no_grad"
    print(
        f"# benchmark_model: {machine_name(device)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32, eval under {mode}"
        + (
            f" with the CondConv experts in {args.expert_dtype}"
            if args.expert_dtype != "float32"
            else ""
        )
        + (", eager kernel mix" if args.eager_mix else "")
        + ", "
        f"{'channels-last' if args.channels_last else 'contiguous (NCHW)'}, detectors "
        f"{'with' if args.with_postprocess else 'without'} postprocessing, "
        f"train batch {args.train_batch}, read bandwidth {bandwidth / 1e9:.1f} GB/s"
        + (", quick (tiny models)" if args.quick else "")
        + (
            f", torch.compile backend {args.compile_backend}"
            if args.compile or args.compile_detector
            else ""
        )
    )
    print(
        "# ratios (x): CondConv cost / static cost; S / C: static / CondConv; targets: "
        f"b1 x <= {TARGETS['latency']}, train x <= {TARGETS['train']}, "
        f"peak x <= {TARGETS['memory']}; floor: static time + experts' bytes moved / read "
        f"bandwidth (eval {EVAL_EXPERT_PASSES}x per call, train {TRAIN_EXPERT_PASSES}x per step)"
        + (
            "; compiled/eager: each twin's whole model, torch.compile'd over eager"
            if args.compile_detector
            else ""
        ),
        flush=True,
    )
    rows, experts = [], []
    with tqdm(total=PROGRESS_STEPS * len(pairs), desc="benchmark_model", file=sys.stderr) as bar:
        for pair in pairs:
            result = benchmark_pair(pair, options, device, bar)
            size = QUICK_SIZE if args.quick else pair.size
            rows.append(table_row(pair, size, result, bandwidth))
            stored = ""
            if result.eval_expert_bytes is not None:
                stored = f" ({result.eval_expert_bytes / 1e6:.1f} MB in {args.expert_dtype})"
            experts.append(f"{pair.name} {result.expert_bytes / 1e6:.1f} MB{stored}")
    header = COLUMNS + (COMPILED_COLUMNS if args.compile else [])
    header += WHOLE_COMPILED_COLUMNS if args.compile_detector else []
    print("\n".join(format_table(header, rows, args.markdown)))
    print(f"# CondConv experts (weights and biases): {', '.join(experts)}")
    print(f"# total time {time.perf_counter() - start:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    config_logger = logging.getLogger("fvcore.common.config")
    config_level = config_logger.level
    try:
        with warnings.catch_warnings():
            # Library chatter that would bury the table: fvcore's trace, detectron2's use of
            # deprecated torch APIs, and the config loader's notice for every _BASE_.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*meshgrid.*")
            config_logger.setLevel(logging.ERROR)
            with native_mix(not args.eager_mix):
                run(args)
    finally:
        torch.set_num_threads(threads)
        config_logger.setLevel(config_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
