#!/usr/bin/env python
"""How a CondConv detector routes: routing weights per layer, class and expert over a dataset.

Runs the model of a config (MODEL.WEIGHTS) in eval mode over a registered detectron2 dataset,
captures the routing weights of every CondConv router for every image, and writes to --output:

- routing.csv: per layer (by depth), class and expert, the mean routing weight over the images
  holding that class, with the class's image count and the layer's mean routing entropy on them;
- routing_overall.csv: per layer and expert, the mean weight over all images and whether the
  expert is unused (mean below --unused-threshold);
- routing_layers.csv: per layer, the entropy and how much routing varies between classes;
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
import csv
import io
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det.checkpoint import CondConvCheckpointer
from condconv_det.config import load_config, run_on_cpu_without_cuda
from condconv_det.engine.coco_json_config import apply_coco_json_for_inference
from condconv_det.engine.trainer import build_mapper, check_weights
from condconv_det.file_io import atomic_write, check_outputs_spare_inputs
from condconv_det.routing_analysis import (
    RoutingRecorder,
    RoutingSummary,
    spread_over_depth,
    summarize_routing,
)

logger = logging.getLogger("condconv_det.analyze_routing")


# What the tool writes into --output.
CSV_FILES = ("routing.csv", "routing_overall.csv", "routing_layers.csv")
PLOT_FILES = ("routing_heatmaps.png", "routing_depth.png", "routing_summary.png")


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


def load_records(name: str, max_images: Optional[int]) -> Tuple[List[dict], List[str]]:
    """The dataset's first ``max_images`` records and its class names."""
    registered = DatasetCatalog.list()
    if name not in registered:
        shapes = sorted(n for n in registered if n.startswith("shapes"))
        raise UsageError(
            f"dataset {name!r} is not registered. The bundled shapes datasets: {shapes}; other "
            "datasets must be registered with detectron2 (e.g. register_coco_instances) by code "
            "that runs before this tool, or pick one with --dataset."
        )
    records = DatasetCatalog.get(name)
    if max_images is not None:
        records = records[:max_images]
    if not records:
        raise UsageError(f"dataset {name!r} has no images: nothing to analyse")
    meta = MetadataCatalog.get(name)
    classes = list(meta.get("thing_classes", []))
    if not classes:
        top = max((a["category_id"] for r in records for a in r.get("annotations", [])), default=-1)
        classes = [f"class{i}" for i in range(top + 1)]
    return records, classes


def image_classes(record: dict, num_classes: int) -> Set[int]:
    """Classes (contiguous ids) with at least one annotation in the image."""
    classes = {int(a["category_id"]) for a in record.get("annotations", [])}
    bad = sorted(c for c in classes if not 0 <= c < num_classes)
    if bad:
        raise UsageError(
            f"{record.get('file_name')}: category ids {bad} outside 0..{num_classes - 1}; "
            "register the dataset with contiguous ids (detectron2's load_coco_json maps them)"
        )
    return classes


def build_model_with_weights(cfg) -> torch.nn.Module:
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        check_weights(cfg.MODEL.WEIGHTS, required=False)
        CondConvCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: analysing a model with random weights.")
    return model.eval()


def collect_routing(
    model: torch.nn.Module, mapper, records: Sequence[dict], batch_size: int = 1
) -> Dict[str, np.ndarray]:
    """Routing weights of every router for every image.

    Returns:
        {layer: (N, E) routing weights}, layers in execution order (depth).
    """
    recorder = RoutingRecorder(model)
    if not recorder.routers:
        raise UsageError(
            "the model has no CondConv router: nothing to analyse. Use a CondConv config "
            "(MODEL.CONDCONV.NUM_EXPERTS > 0, or MODEL.SSD.EXTRA_NUM_EXPERTS / HEAD_NUM_EXPERTS "
            "> 0), not a static twin."
        )
    chunks: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad(), recorder, tqdm(total=len(records), unit="img", desc="routing") as bar:
        for start in range(0, len(records), batch_size):
            batch = [mapper(dict(r)) for r in records[start : start + batch_size]]
            model(batch)
            for layer, weights in recorder.pop().items():
                if weights.shape[0] != len(batch):
                    raise RuntimeError(
                        f"router {layer!r} produced {weights.shape[0]} routing vectors for "
                        f"{len(batch)} images: it does not run once per image per forward"
                    )
                chunks.setdefault(layer, []).append(weights.float().cpu().numpy())
            bar.update(len(batch))
    return {layer: np.concatenate(parts) for layer, parts in chunks.items()}


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_csvs(summary: RoutingSummary, out_dir: str) -> List[str]:
    """Writes routing.csv, routing_overall.csv and routing_layers.csv; returns their paths."""
    per_class, overall, per_layer = [], [], []
    for depth, layer in enumerate(summary.layers):
        unused = summary.unused[layer]
        for c, name in enumerate(summary.class_names):
            for e, weight in enumerate(summary.class_mean[layer][c]):
                per_class.append(
                    {
                        "depth": depth,
                        "layer": layer,
                        "class": name,
                        "num_images": int(summary.class_counts[c]),
                        "expert": e,
                        "mean_weight": _cell(weight),
                        "entropy": _cell(summary.class_entropy[layer][c]),
                        "unused": int(unused[e]),
                    }
                )
        for e, weight in enumerate(summary.overall_mean[layer]):
            overall.append(
                dict(
                    depth=depth,
                    layer=layer,
                    num_images=summary.num_images,
                    expert=e,
                    mean_weight=_cell(weight),
                    entropy=_cell(summary.overall_entropy[layer]),
                    unused=int(unused[e]),
                )
            )
        per_layer.append(
            dict(
                depth=depth,
                layer=layer,
                num_experts=len(unused),
                entropy=_cell(summary.overall_entropy[layer]),
                max_entropy=_cell(math.log(len(unused))),
                between_class_var=_cell(summary.between_class_var[layer]),
                class_share=_cell(summary.class_share[layer]),
                unused_experts=int(unused.sum()),
            )
        )
    paths = []
    for name, rows in zip(CSV_FILES, (per_class, overall, per_layer)):
        paths.append(os.path.join(out_dir, name))
        _write_csv(paths[-1], rows)
    return paths


def _short(layer: str) -> str:
    """``backbone.bottom_up.res4.2`` -> ``res4.2``: what tells layers apart on a plot."""
    for prefix in ("backbone.bottom_up.", "backbone."):
        if layer.startswith(prefix):
            return layer[len(prefix) :]
    return layer


def _plot_heatmaps(fig, axes, summary: RoutingSummary, picks: Sequence[int]) -> None:
    present = [c for c, n in enumerate(summary.class_counts) if n > 0]
    labels = [f"{summary.class_names[c]} ({summary.class_counts[c]})" for c in present]
    for ax, depth in zip(axes, picks):
        layer = summary.layers[depth]
        grid = summary.class_mean[layer][present]
        # A colour scale per layer (its own min..max): what matters is the contrast between
        # classes within a layer, not the layers' different overall levels.
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_title(f"{_short(layer)}\n(layer {depth + 1} of {len(summary.layers)})", fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(len(present)))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)


def _plot_depth(ax, summary: RoutingSummary) -> None:
    depth = np.arange(1, len(summary.layers) + 1)
    norm_entropy = [
        summary.overall_entropy[layer] / max(math.log(len(summary.overall_mean[layer])), 1e-12)
        for layer in summary.layers
    ]
    share = [summary.class_share[layer] for layer in summary.layers]
    ax.plot(depth, norm_entropy, "o-", color="tab:blue", label="entropy / log E")
    ax.plot(depth, share, "s-", color="tab:red", label="between-class share of variance")
    ax.set_xlabel("router depth", fontsize=8)
    # The share can pass 1 on few images: an image counts for each of its classes.
    ax.set_ylim(0, max(1.05, max(share) + 0.05))
    ax.set_xticks(depth)
    ax.set_xticklabels([_short(layer) for layer in summary.layers], rotation=90, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("routing by depth", fontsize=9)
    ax.grid(alpha=0.3)


def _save_figure(fig, path: str, dpi: int) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def write_plots(
    summary: RoutingSummary, out_dir: str, title: str, num_heatmaps: int = 3
) -> List[str]:
    """Writes routing_heatmaps.png, routing_depth.png and routing_summary.png; returns their
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = spread_over_depth(len(summary.layers), num_heatmaps)
    paths = []

    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks) + 1.0, 3.0), squeeze=False)
    _plot_heatmaps(fig, list(axes[0]), summary, picks)
    fig.suptitle(f"{title}: mean routing weight per class (images)", fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOT_FILES[0]))
    _save_figure(fig, paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    _plot_depth(ax, summary)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOT_FILES[1]))
    _save_figure(fig, paths[-1], dpi=100)
    plt.close(fig)

    fig = plt.figure(figsize=(3.0 * len(picks) + 4.2, 3.2))
    grid = fig.add_gridspec(1, len(picks) + 1, width_ratios=[1.0] * len(picks) + [1.35])
    heat_axes = [fig.add_subplot(grid[0, i]) for i in range(len(picks))]
    _plot_heatmaps(fig, heat_axes, summary, picks)
    _plot_depth(fig.add_subplot(grid[0, -1]), summary)
    fig.suptitle(f"{title}: mean routing weight per class, and routing by depth", fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOT_FILES[2]))
    _save_figure(fig, paths[-1], dpi=90)
    plt.close(fig)
    return paths


def print_table(summary: RoutingSummary) -> None:
    print(
        f"\n{summary.num_images} images; per class: "
        + ", ".join(f"{n} {c}" for c, n in zip(summary.class_names, summary.class_counts))
    )
    header = ("depth", "layer", "E", "entropy/logE", "class share", "unused")
    print("{:>5}  {:<32} {:>2} {:>12} {:>11} {:>6}".format(*header))
    for depth, layer in enumerate(summary.layers):
        num_experts = len(summary.overall_mean[layer])
        print(
            f"{depth:>5}  {_short(layer):<32} {num_experts:>2} "
            f"{summary.overall_entropy[layer] / math.log(max(num_experts, 2)):>12.3f} "
            f"{summary.class_share[layer]:>11.3f} {int(summary.unused[layer].sum()):>6}"
        )


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
    summary = summarize_routing(routing, classes, class_names, args.unused_threshold)
    os.makedirs(args.output, exist_ok=True)
    written = write_csvs(summary, args.output)
    title = f"{os.path.basename(args.config_file)} on {dataset}"
    written += write_plots(summary, args.output, title, args.heatmaps)
    print_table(summary)
    print("\nwrote " + ", ".join(written))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logger.isEnabledFor(logging.INFO):
        setup_logger(name="condconv_det")
        setup_logger(name="fvcore")  # the checkpointer says what it loaded, and what it did not
    try:
        run(args)
    except UsageError as e:
        sys.exit(f"error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
