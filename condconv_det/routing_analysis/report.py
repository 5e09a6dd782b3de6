"""The routing analysis written out: CSVs, plots and a text table of a :class:`RoutingSummary`
(``tools/analyze_routing.py``). Every file is written atomically. The plots need matplotlib,
imported when they are drawn."""

import csv
import io
import math
import os
from typing import Dict, List, Sequence

import numpy as np

from condconv_det.file_io import atomic_write

from .summary import RoutingSummary, spread_over_depth

__all__ = ["CSV_FILES", "PLOT_FILES", "format_table", "write_csvs", "write_plots"]

# What write_csvs and write_plots write into their folder.
CSV_FILES = ("routing.csv", "routing_overall.csv", "routing_layers.csv")
PLOT_FILES = ("routing_heatmaps.png", "routing_depth.png", "routing_summary.png")


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_csvs(summary: RoutingSummary, out_dir: str) -> List[str]:
    """Writes :data:`CSV_FILES` into ``out_dir``: per layer, class and expert (routing.csv), per
    layer and expert over all images (routing_overall.csv), per layer (routing_layers.csv).
    Layers by depth; a class without images has empty cells, and so have the kernel columns
    of a summary made without the kernels.

    Returns:
        the paths written.
    """
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
                kernel_spread=_cell(summary.kernel_spread.get(layer, math.nan)),
                kernel_class_share=_cell(summary.kernel_class_share.get(layer, math.nan)),
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
    if summary.kernel_class_share:
        kernel_share = [summary.kernel_class_share.get(layer, math.nan) for layer in summary.layers]
        ax.plot(depth, kernel_share, "^--", color="tab:green", label="... of the mixed kernel")
        share = share + [s for s in kernel_share if not math.isnan(s)]
    ax.set_xlabel("router depth", fontsize=8)
    # The share can pass 1 on few images: an image counts for each of its classes.
    ax.set_ylim(0, max(1.05, max(share) + 0.05))
    ax.set_xticks(depth)
    ax.set_xticklabels([_short(layer) for layer in summary.layers], rotation=90, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    handles, labels = ax.get_legend_handles_labels()
    top = ax  # the legend goes on the axis drawn last, above every line
    # How far apart the classes' mean routings lie (what the paper's plots of mean routing per
    # class show), not relative to the spread between images; it spans orders of magnitude.
    variance = np.array([summary.between_class_var[layer] for layer in summary.layers], float)
    shown = np.isfinite(variance) & (variance > 0)
    if shown.any():
        right = ax.twinx()
        line = right.semilogy(
            depth[shown],
            variance[shown],
            "d:",
            color="tab:purple",
            label="between-class variance (right)",
        )
        right.tick_params(axis="y", labelsize=7, colors="tab:purple")
        handles, labels = handles + line, labels + [line[0].get_label()]
        top = right
    top.legend(handles, labels, fontsize=6, loc="center left", framealpha=0.8)
    ax.set_title("routing by depth", fontsize=9)
    ax.grid(alpha=0.3)


def _save_figure(fig, path: str, dpi: int) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def write_plots(
    summary: RoutingSummary, out_dir: str, title: str, num_heatmaps: int = 3
) -> List[str]:
    """Writes :data:`PLOT_FILES` into ``out_dir``: classes x experts heatmaps of
    ``num_heatmaps`` layers spread over depth, entropy and class share by depth, and both side
    by side.

    Args:
        summary: what to plot.
        out_dir: an existing folder.
        title: the figures' title (e.g. the config and the dataset).
        num_heatmaps: how many layers get a heatmap.

    Returns:
        the paths written.
    """
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


def format_table(summary: RoutingSummary) -> str:
    """A text table of the summary, one row per layer: entropy over log E, the class share of
    the variance, unused experts, and with the kernels their spread over images (relative to
    the mean kernel) and its class share; above it the image count per class."""
    lines = [
        f"\n{summary.num_images} images; per class: "
        + ", ".join(f"{n} {c}" for c, n in zip(summary.class_names, summary.class_counts))
    ]
    header = ["depth", "layer", "E", "entropy/logE", "class share", "unused"]
    row = "{:>5}  {:<32} {:>2} {:>12} {:>11} {:>6}"
    if summary.kernel_spread:
        header += ["kernel spread", "kernel class share"]
        row += " {:>13} {:>18}"
    lines.append(row.format(*header))
    for depth, layer in enumerate(summary.layers):
        num_experts = len(summary.overall_mean[layer])
        cells = [
            depth,
            _short(layer),
            num_experts,
            f"{summary.overall_entropy[layer] / math.log(max(num_experts, 2)):.3f}",
            f"{summary.class_share[layer]:.3f}",
            int(summary.unused[layer].sum()),
        ]
        if summary.kernel_spread:
            cells += [
                f"{summary.kernel_spread.get(layer, math.nan):.2e}",
                f"{summary.kernel_class_share.get(layer, math.nan):.3f}",
            ]
        lines.append(row.format(*cells))
    return "\n".join(lines)
