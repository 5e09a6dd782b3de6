#!/usr/bin/env python
"""How a CondConv detector routes: routing weights per layer, class and expert over a dataset.

Runs the model of a config (MODEL.WEIGHTS) in eval mode over a registered detectron2 dataset,
captures the routing weights of every CondConv router for every image, and writes to --output:

- routing.csv: per layer (by depth), class and expert, the mean routing weight over the images
  holding that class, with the class's image count and the layer's mean routing entropy on them;
- routing_overall.csv: per layer and expert, the mean weight over all images and whether the
  expert is unused (mean below --unused-threshold);
- routing_layers.csv: per layer, the entropy and how much routing varies between classes, and
  how much the mixed kernel itself varies between images (its spread relative to the mean
  kernel: upcycled experts that are near copies mix nearly one kernel whatever the routing)
  and what part of that the class explains;
- routing_heatmaps.png (classes x experts for an early, a middle and a late layer),
  routing_depth.png (entropy and class dependence by depth) and routing_summary.png (both).

Each file is written atomically; an --output whose files would replace the config or the
weights is refused before anything runs.

An image counts for every class with at least one annotation in it (crowd regions included),
once however many such objects it holds; an image without annotations counts only in the
overall statistics. The paper (sec. 5) finds class-specific routing in deep layers only.

    python tools/analyze_routing.py --config-file configs/shapes/ssd_condconv_MNv1.yaml \\
        --output output/routing MODEL.WEIGHTS output/shapes_condconv/model_final.pth
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import logging
import os
import sys
from typing import Sequence

import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det.checkpoint import load_weights_exact
from condconv_det.config import load_config, run_on_cpu_without_cuda
from condconv_det.engine.coco_json_config import apply_coco_json_for_inference
from condconv_det.engine.trainer import build_mapper, check_weights
from condconv_det.file_io import check_outputs_spare_inputs
from condconv_det.routing_analysis import (
    CSV_FILES,
    PLOT_FILES,
    RoutingAnalysisError,
    RoutingSummary,
    collect_routing,
    format_table,
    routed_kernels,
    summarize_routing,
    write_csvs,
    write_plots,
)
from condconv_det.routing_analysis.dataset import image_classes, load_records

logger = logging.getLogger("condconv_det.analyze_routing")


class UsageError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def setup_cfg(config_file: str, opts: Sequence[str]):
    try:
        cfg = load_config(config_file, opts)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    for change in apply_coco_json_for_inference(cfg, config_file, opts):  # DATASETS.COCO_JSON
        logger.info(change)
    if run_on_cpu_without_cuda(cfg):
        logger.warning("MODEL.DEVICE is cuda but CUDA is not available: running on the CPU.")
    cfg.freeze()
    return cfg


def build_model_with_weights(cfg) -> torch.nn.Module:
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        check_weights(cfg.MODEL.WEIGHTS, required=False)
        load_weights_exact(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: analysing a model with random weights.")
    return model.eval()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="a condconv_det config with CondConv layers"
    )
    parser.add_argument(
        "--dataset", default=None, help="a registered dataset; default DATASETS.TEST[0]"
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="analyse only the first N images"
    )
    parser.add_argument("--output", required=True, help="folder for the CSVs and PNGs")
    parser.add_argument(
        "--unused-threshold",
        type=float,
        default=0.01,
        help="an expert whose mean routing weight over all images is below this is unused "
        "(default 0.01, for sigmoid routing; with softmax over E experts uniform is 1/E)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward pass (default 1: with inputs of different sizes, a batch pads "
        "them, and the routers' average pooling would see the padding)",
    )
    parser.add_argument(
        "--heatmaps", type=int, default=3, help="layers shown as heatmaps, spread over depth"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.heatmaps < 1:
        parser.error(f"--heatmaps must be >= 1, got {args.heatmaps}")
    return args


def check_outputs(args: argparse.Namespace, cfg) -> None:
    """Refuses an --output whose files would replace the config or the weights."""
    inputs = [("--config-file", args.config_file)]
    inputs.append(("MODEL.WEIGHTS", os.path.expanduser(cfg.MODEL.WEIGHTS)))
    outputs = [args.output] + [os.path.join(args.output, n) for n in CSV_FILES + PLOT_FILES]
    try:
        check_outputs_spare_inputs(inputs, outputs, option="--output")
    except ValueError as e:
        raise UsageError(str(e)) from e


def run(args: argparse.Namespace) -> RoutingSummary:
    cfg = setup_cfg(args.config_file, args.opts)
    check_outputs(args, cfg)
    if args.dataset is None and not cfg.DATASETS.TEST:
        raise UsageError("the config has no DATASETS.TEST: name a dataset with --dataset")
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    records, class_names = load_records(dataset, args.max_images)
    classes = [image_classes(r, len(class_names)) for r in records]
    model = build_model_with_weights(cfg)
    routing = collect_routing(model, build_mapper(cfg, is_train=False), records, args.batch_size)
    kernels = routed_kernels(model)
    summary = summarize_routing(routing, classes, class_names, args.unused_threshold, kernels)
    os.makedirs(args.output, exist_ok=True)
    written = write_csvs(summary, args.output)
    title = f"{os.path.basename(args.config_file)} on {dataset}"
    written += write_plots(summary, args.output, title, args.heatmaps)
    print(format_table(summary))
    print("\nwrote " + ", ".join(written))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logger.isEnabledFor(logging.INFO):
        setup_logger(name="condconv_det")
        setup_logger(name="fvcore")  # the checkpointer says what it loaded, and what it did not
    try:
        run(args)
    except (UsageError, RoutingAnalysisError) as e:
        sys.exit(f"error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
