#!/usr/bin/env python
"""Parameters and multiply-adds of CondConv models, per layer and in total.

CondConv layers are counted as in the paper: per example, the routing FC, the kernel mix and
the convolution with the mixed kernel (see condconv_det/analysis.py).

    # an ImageNet classifier at 224x224
    python tools/analyze_model.py --arch efficientnet_b0 --experts 8
    # any detectron2 config (detector or backbone) at its test input size
    python tools/analyze_model.py --config-file configs/... [KEY VALUE ...]
    # the paper's models next to the paper's figures (the table of docs/models.md)
    python tools/analyze_model.py --paper-table
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import sys
import warnings

import torch
from fvcore.nn import flop_count_table

from condconv_det.analysis import count_parameters, madds_analysis

# (architecture, experts, paper params, paper MAdds, source). Params/MAdds None: not reported.
PAPER_ROWS = [
    ("efficientnet_b0", 0, 5.3e6, 391e6, "official EfficientNet-CondConv README"),
    ("efficientnet_b0", 4, 13.3e6, 402e6, "official EfficientNet-CondConv README"),
    ("efficientnet_b0", 8, 24.0e6, 413e6, "official EfficientNet-CondConv README"),
    ("mobilenet_v1", 0, None, 567e6, "paper Table 1 (not re-checked)"),
    ("mobilenet_v1", 8, None, 600e6, "paper Table 1 (not re-checked)"),
    ("mobilenet_v2", 0, 3.5e6, 301e6, "paper Table 1 (not re-checked)"),
    ("mobilenet_v2", 8, 27.5e6, 329e6, "DY-CNN's table, quoting CondConv"),
    ("resnet50", 0, 25.6e6, 4093e6, "paper Table 1 (not re-checked)"),
    ("resnet50", 8, None, 4213e6, "paper Table 1 (not re-checked)"),
]


def analyze_classifier(arch: str, experts, size: int):
    from condconv_det.modeling.classifier import build_classifier

    model = build_classifier(arch, num_experts=experts).eval()
    analysis = madds_analysis(model, (torch.zeros(1, 3, size, size),))
    return model, analysis


def analyze_config(config_file: str, opts, size):
    from condconv_det.analysis import analyze_detector
    from condconv_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return analyze_detector(cfg, size)


def print_summary(model, analysis, label: str) -> None:
    params = count_parameters(model)
    print(flop_count_table(analysis, max_depth=3))
    print(
        f"\n{label}: {params['total'] / 1e6:.2f}M parameters "
        f"({params['experts'] / 1e6:.2f}M in CondConv experts), "
        f"{analysis.total() / 1e6:.1f}M multiply-adds"
    )


def print_paper_table() -> None:
    print("| model | experts | params | paper params | MAdds | paper MAdds | paper source |")
    print("|---|---|---|---|---|---|---|")
    for arch, experts, paper_params, paper_madds, source in PAPER_ROWS:
        model, analysis = analyze_classifier(arch, experts, 224)
        params = count_parameters(model)["total"]
        madds = analysis.total()

        def rel(ours, theirs, unit):
            if theirs is None:
                return "-"
            suffix = "M" if unit == 1e6 else ""
            return f"{theirs / unit:.1f}{suffix} ({(ours / theirs - 1) * 100:+.1f}%)"

        print(
            f"| {arch} | {experts} | {params / 1e6:.2f}M | {rel(params, paper_params, 1e6)} | "
            f"{madds / 1e6:.1f}M | {rel(madds, paper_madds, 1e6)} | {source} |",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--arch", help="classifier: mobilenet_v1, mobilenet_v2, efficientnet_b0, resnet18..101"
    )
    what.add_argument("--config-file", help="a detectron2 config using condconv_det")
    what.add_argument(
        "--paper-table", action="store_true", help="the paper's models vs its figures"
    )
    parser.add_argument(
        "--experts", type=int, default=None, help="CondConv experts (0: static model)"
    )
    parser.add_argument("--size", default=None, help="input size: S (square) or HxW")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    size = None
    if args.size:
        try:
            parts = [int(v) for v in args.size.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or min(parts) < 32:
            parser.error(f"--size takes S or HxW (at least 32 each), got {args.size!r}")
        size = (parts[0], parts[-1])

    if args.paper_table:
        print_paper_table()
    elif args.arch:
        if size is not None and size[0] != size[1]:
            parser.error("--arch takes a square --size S")
        side = size[0] if size else 224
        model, analysis = analyze_classifier(args.arch, args.experts, side)
        print_summary(
            model,
            analysis,
            f"{args.arch} (experts {args.experts}) at {side}x{side}",
        )
    else:
        model, analysis = analyze_config(args.config_file, args.opts, size)
        print_summary(model, analysis, args.config_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
